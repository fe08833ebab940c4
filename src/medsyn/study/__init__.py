"""Reader studies: MedGAN's perceptual study (Sec. 3.2.3, Table III) as a product.

``create`` draws trials (the same slice from the reference and from each method) and renders them
to PNGs under opaque names; ``serve`` is a local web app where each reader, with a personal link,
picks the image they believe real and rates every image's realism 1–4; ``analyse`` gives Table III
(mean score per method, % judged real, per reader and overall), inter-reader agreement and paired
tests. See docs/reader_study.md.
"""
