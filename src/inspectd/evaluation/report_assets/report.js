// inspectd evaluate --report: renders the image cards of one page of the chosen filter from the rows in the page.
// The state lives in the URL hash (#filter=missed&class=crack&page=2), so a view can be linked.
"use strict";

const PER_PAGE = 24;
const PANELS = [["input", "input"], ["recon", "reconstruction"], ["heat", "heat map"], ["pred", "predicted regions"], ["truth", "ground truth"]];
const TAGS = { missed: "missed defect", false_reject: "false reject", found: "defect found", passed: "good, passed" };
const rows = JSON.parse(document.getElementById("rows").textContent);
rows.forEach((r, i) => { r.rank = i + 1; });

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  return { filter: p.get("filter") || "all", cls: p.get("class") || "", page: Math.max(1, parseInt(p.get("page") || "1", 10) || 1) };
}

function writeHash(v) {
  const p = new URLSearchParams();
  if (v.filter !== "all") p.set("filter", v.filter);
  if (v.cls) p.set("class", v.cls);
  if (v.page > 1) p.set("page", String(v.page));
  const hash = p.toString();
  history.replaceState(null, "", hash ? "#" + hash : location.pathname);
  render(v);
}

function card(r) {
  const el = document.createElement("article");
  el.className = "card " + r.outcome;
  el.dataset.outcome = r.outcome;
  el.dataset.class = r.class;
  const h = document.createElement("h3");
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = TAGS[r.outcome];
  h.append(`#${r.rank} · `, tag, ` · ${r.class} · ${r.file} · score ${r.score.toFixed(4)} · ${r.reject ? "rejected" : "passed"}` +
    ` · predicted area ${r.area} px` + (r.truth_area ? ` · true area ${r.truth_area} px` : ""));
  const panels = document.createElement("div");
  panels.className = "panels";
  for (const [key, caption] of PANELS) {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.loading = "lazy";
    img.style.aspectRatio = String(r.ratio);
    img.src = r.panels[key];
    img.alt = `${caption} of ${r.file}`;
    const cap = document.createElement("figcaption");
    cap.textContent = caption;
    fig.append(img, cap);
    panels.appendChild(fig);
  }
  el.append(h, panels);
  return el;
}

function render(v) {
  const chosen = rows.filter((r) => (v.filter === "all" || r.outcome === v.filter) && (!v.cls || r.class === v.cls));
  const pages = Math.max(1, Math.ceil(chosen.length / PER_PAGE));
  const page = Math.min(v.page, pages);
  const shown = chosen.slice((page - 1) * PER_PAGE, page * PER_PAGE);
  document.getElementById("gallery").replaceChildren(...shown.map(card));
  document.querySelectorAll("[data-filter]").forEach((b) => b.classList.toggle("on", b.dataset.filter === v.filter));
  document.getElementById("class-filter").value = v.cls;
  document.getElementById("shown").textContent = chosen.length ? `${chosen.length} images` : "no images match";
  document.getElementById("page").textContent = `page ${page} of ${pages}`;
  document.getElementById("prev").disabled = page <= 1;
  document.getElementById("next").disabled = page >= pages;
  current = { ...v, page };
}

let current = readHash();
document.querySelectorAll("[data-filter]").forEach((b) => b.addEventListener("click", () => writeHash({ ...current, filter: b.dataset.filter, page: 1 })));
document.getElementById("class-filter").addEventListener("change", (e) => writeHash({ ...current, cls: e.target.value, page: 1 }));
document.getElementById("prev").addEventListener("click", () => writeHash({ ...current, page: current.page - 1 }));
document.getElementById("next").addEventListener("click", () => { writeHash({ ...current, page: current.page + 1 }); document.getElementById("images").scrollIntoView(); });
window.addEventListener("hashchange", () => render(readHash()));
render(current);
