// medsyn reader study: one trial at a time; answers are sent when submitted and are final.
"use strict";
const token = location.pathname.split("/").filter(Boolean)[1];
const api = (p) => `/api/${token}/${p}`;
const LETTERS = "ABCDEFGHIJ";
let st = null, cur = null, ratings = {}, choice = null, focus = 0, shownAt = 0, busy = false;

function $(id) { return document.getElementById(id); }

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
  return r.json();
}

function showProgress() {
  $("bar").max = st.n_trials; $("bar").value = st.done;
  $("count").textContent = `${st.done} / ${st.n_trials} done`;
}

async function loadState() {
  const s = await getJSON(api("state"));
  const next = s.next < s.n_trials ? await getJSON(api(`trial/${s.next}`)) : null;
  st = s;  // state, progress and trial change together: the page never shows one without the other
  $("title").textContent = st.title;
  showProgress();
  if (next === null) { $("trial").style.display = "none"; $("done").style.display = "block"; return; }
  cur = next;
  ratings = {}; choice = null; focus = 0; shownAt = performance.now();
  render();
  document.body.dataset.position = String(st.next);  // which trial is on screen (for scripted readers)
}

function render() {
  const box = $("images");
  box.innerHTML = "";
  cur.images.forEach((name, i) => {
    const card = document.createElement("div");
    card.className = "card" + (i === focus ? " focused" : "") + (choice === name ? " real" : "");
    card.dataset.image = name;
    const h = document.createElement("h2");
    h.textContent = `Image ${LETTERS[i]}`;
    const img = document.createElement("img");
    img.src = `/img/${token}/${name}.png`;
    img.alt = `image ${LETTERS[i]}`;
    img.addEventListener("click", () => { focus = i; render(); });
    const realBtn = document.createElement("button");
    realBtn.className = "realbtn" + (choice === name ? " on" : "");
    realBtn.textContent = choice === name ? "✓ I believe this one is real" : "This one is real";
    realBtn.dataset.action = "real";
    realBtn.addEventListener("click", () => { choice = name; focus = i; render(); });
    const row = document.createElement("div");
    row.className = "row";
    for (let v = 1; v <= 4; v++) {
      const b = document.createElement("button");
      b.textContent = String(v);
      b.title = st.scale[String(v)];
      b.dataset.rating = String(v);
      if (ratings[name] === v) b.classList.add("on");
      b.addEventListener("click", () => { ratings[name] = v; focus = i; render(); });
      row.appendChild(b);
    }
    card.append(h, img, realBtn, row);
    box.appendChild(card);
  });
  const complete = choice !== null && cur.images.every((n) => ratings[n]);
  $("submit").disabled = !complete || busy;
  $("msg").textContent = complete ? "" : `Still to do: ${choice === null ? "pick the real image; " : ""}` +
    `${cur.images.filter((n) => !ratings[n]).length} rating(s).`;
}

async function submit() {
  if ($("submit").disabled) return;
  busy = true; render();
  const body = { trial: cur.trial, choice, ratings, seconds: (performance.now() - shownAt) / 1000 };
  try {
    const r = await fetch(api("answer"), { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify(body) });
    const res = await r.json().catch(() => ({}));
    if (!r.ok && r.status !== 409) throw new Error(res.error || r.statusText);
  } catch (e) {
    busy = false; render(); $("msg").textContent = `Not saved (${e.message}); try again.`; return;
  }
  busy = false;
  await loadState();
}

$("submit").addEventListener("click", submit);
document.addEventListener("keydown", (ev) => {
  if (!cur || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key.toUpperCase();
  const i = LETTERS.indexOf(k);
  if (k.length === 1 && i >= 0 && i < cur.images.length) { focus = i; render(); }
  else if ("1234".includes(ev.key) && ev.key.length === 1) { ratings[cur.images[focus]] = Number(ev.key); render(); }
  else if (k === "R") { choice = cur.images[focus]; render(); }
  else if (ev.key === "Enter") { submit(); }
  else return;
  ev.preventDefault();
});
loadState().catch((e) => { $("msg").textContent = `Cannot load the study: ${e.message}`; });
