"""3D patch sampler: exact patch contents, padding at borders, centre policy, resumable RNG."""

import numpy as np

from medsyn.data.patches3d import PatchSampler3D
from medsyn.data.sampling import NormalizedCase


def _case(shape=(10, 12, 8), label=True):
    rng = np.random.default_rng(1)
    src = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    tgt = rng.uniform(-1, 1, shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:8, 3:9, 2:6] = True
    lab = np.zeros(shape, np.int16)
    if label:
        lab[4, 5, 3] = 2
    return NormalizedCase("c", src, tgt, mask, lab)


def test_patch_matches_hand_extraction_with_padding():
    c = _case()
    s = PatchSampler3D([c], patch_size=(4, 6, 5), label_fraction=1.0, seed=0)
    x, y, m = s.sample()  # centred on the single label voxel (4, 5, 3)
    assert x.shape == (2, 4, 6, 5) and y.shape == (1, 4, 6, 5) and m.shape == (1, 4, 6, 5)
    np.testing.assert_array_equal(x, c.source[:, 2:6, 2:8, 1:6])
    np.testing.assert_array_equal(y[0], c.target[2:6, 2:8, 1:6])
    np.testing.assert_array_equal(m[0], c.mask[2:6, 2:8, 1:6])


def test_border_patch_is_padded_with_modality_minimum():
    c = _case(label=False)
    c.label[0, 0, 0] = 1  # centre the patch on the corner voxel
    s = PatchSampler3D([c], patch_size=(8, 8, 8), label_fraction=1.0, seed=3)
    x, y, m = s.sample()
    for mod in range(2):
        assert (x[mod, :4] == c.source[mod].min()).all()  # the 4 planes before the corner are padding
        np.testing.assert_array_equal(x[mod, 4:, 4:, 4:], c.source[mod, :4, :4, :4])
    assert (m[0, :4] == 0).all()


def test_foreground_centres_and_resume():
    c = _case(label=False)
    s = PatchSampler3D([c], patch_size=(3, 3, 3), foreground_fraction=1.0, seed=5)
    for _ in range(30):
        _, _, m = s.sample()
        assert m[0, 1, 1, 1] == 1.0  # the centre voxel lies in the mask
    state = s.state_dict()
    a = s.batch(3)
    s.load_state_dict(state)
    b = s.batch(3)
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy())
