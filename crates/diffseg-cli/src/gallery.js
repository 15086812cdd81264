// diffseg view: paging, search, the overlay slider and hovering. Everything the
// page shows is in the page or beside it: no network.
"use strict";
(() => {
  const figures = Array.from(document.querySelectorAll("main > figure"));
  const pageSize = Number(document.body.dataset.pageSize) || 50;
  const filter = document.getElementById("filter");
  const pageLabel = document.getElementById("page");
  const previous = document.getElementById("previous");
  const next = document.getElementById("next");
  const opacity = document.getElementById("opacity");
  const tooltip = document.getElementById("tooltip");
  let matching = figures;
  let page = 0;
  // The figures shown: the first page's until the script pages.
  let shown = figures.filter((figure) => !figure.hidden);

  // Only the current page's figures are shown, so only their (lazy) images load.
  // Only the figures that change are touched: with 10,000 figures, hiding every
  // one on each turn of a page would take a second.
  function showPage() {
    const pages = Math.max(1, Math.ceil(matching.length / pageSize));
    page = Math.min(Math.max(page, 0), pages - 1);
    const onPage = matching.slice(page * pageSize, (page + 1) * pageSize);
    for (const figure of shown) figure.hidden = true;
    for (const figure of onPage) figure.hidden = false;
    shown = onPage;
    pageLabel.textContent = `page ${page + 1} of ${pages} (${matching.length} results)`;
    previous.disabled = page === 0;
    next.disabled = page >= pages - 1;
    try {
      if (location.hash !== `#page=${page + 1}`) history.replaceState(null, "", `#page=${page + 1}`);
    } catch (error) {
      // Some browsers refuse history changes on file:// pages; paging works without.
    }
  }
  const fromHash = /^#page=(\d+)$/.exec(location.hash);
  if (fromHash) page = Number(fromHash[1]) - 1;
  previous.addEventListener("click", () => { page -= 1; showPage(); scrollTo(0, 0); });
  next.addEventListener("click", () => { page += 1; showPage(); scrollTo(0, 0); });
  filter.addEventListener("input", () => {
    const wanted = filter.value.trim().toLowerCase();
    matching = figures.filter((figure) => figure.dataset.image.toLowerCase().includes(wanted));
    page = 0;
    showPage();
  });
  if (opacity) {
    opacity.addEventListener("input", () => {
      document.documentElement.style.setProperty("--overlay", opacity.value / 100);
    });
  }
  showPage();

  // A figure's label map, decoded once from the small PNG it carries (a data:
  // URL, which a canvas may read; a file:// image it may not).
  const maps = new WeakMap();
  function labelMap(figure) {
    if (!maps.has(figure)) {
      const canvas = figure.querySelector("canvas.highlight");
      maps.set(figure, canvas ? decodeMap(canvas) : Promise.resolve(null));
    }
    return maps.get(figure);
  }
  async function decodeMap(canvas) {
    const image = new Image();
    image.src = canvas.dataset.map;
    await image.decode();
    const scratch = document.createElement("canvas");
    scratch.width = canvas.width;
    scratch.height = canvas.height;
    const context = scratch.getContext("2d", { willReadFrequently: true });
    context.drawImage(image, 0, 0);
    const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
    const labels = new Uint32Array(canvas.width * canvas.height);
    // A grey map holds the label in every channel; an RGB one, a byte in each.
    const grey = "grey" in canvas.dataset;
    for (let i = 0; i < labels.length; i++) {
      labels[i] = grey ? rgba[4 * i] : rgba[4 * i] | (rgba[4 * i + 1] << 8) | (rgba[4 * i + 2] << 16);
    }
    return { canvas, labels, width: canvas.width, height: canvas.height };
  }

  function hexColour(text) {
    const value = parseInt(text.slice(1), 16);
    return [value >> 16, (value >> 8) & 255, value & 255];
  }

  // Paints the hovered segment (or, on a figure with no image, every segment in
  // its legend colour with the hovered one brighter) into the figure's canvas.
  function paint(figure, map, hovered) {
    const context = map.canvas.getContext("2d");
    const pixels = context.createImageData(map.width, map.height);
    const mapOnly = figure.querySelector(".stage").classList.contains("map-only");
    const colours = new Map();
    if (mapOnly) {
      for (const item of figure.querySelectorAll(".legend li")) {
        colours.set(Number(item.dataset.label), hexColour(item.style.getPropertyValue("--c").trim()));
      }
    }
    for (let i = 0; i < map.labels.length; i++) {
      const label = map.labels[i];
      if (label === hovered) {
        pixels.data.set([255, 255, 255, 140], 4 * i);
      } else if (mapOnly && colours.has(label)) {
        pixels.data.set([...colours.get(label), 255], 4 * i);
      }
    }
    context.putImageData(pixels, 0, 0);
  }

  // "segment 3 “sky”: 12,345 px (8.2%)", from the legend entry of the label.
  function describe(figure, label) {
    const item = figure.querySelector(`.legend li[data-label="${label}"]`);
    if (!item) return { item: null, text: `segment ${label}` };
    const name = item.dataset.name ? ` “${item.dataset.name}”` : "";
    const area = Number(item.dataset.area);
    const percent = (100 * area) / (figure.dataset.width * figure.dataset.height);
    const percentText = percent < 0.05 && area > 0 ? "<0.1" : percent.toFixed(1);
    return { item, text: `segment ${label}${name}: ${area.toLocaleString("en")} px (${percentText}%)` };
  }

  for (const figure of figures) {
    const stage = figure.querySelector(".stage");
    const output = figure.querySelector("output.hover");
    let current = null;
    figure.querySelector("figcaption .name").addEventListener("click", () => {
      figure.classList.toggle("large");
    });
    if (stage.classList.contains("map-only")) {
      labelMap(figure).then((map) => map && paint(figure, map, -1));
    }
    stage.addEventListener("mousemove", async (event) => {
      const map = await labelMap(figure);
      if (!map) return;
      const box = stage.getBoundingClientRect();
      const x = Math.min(map.width - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * map.width)));
      const y = Math.min(map.height - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * map.height)));
      const label = map.labels[y * map.width + x];
      const { item, text } = describe(figure, label);
      output.textContent = text;
      tooltip.textContent = text;
      tooltip.style.left = `${event.clientX + 14}px`;
      tooltip.style.top = `${event.clientY + 14}px`;
      tooltip.hidden = false;
      if (label !== current) {
        figure.querySelector(".legend li.active")?.classList.remove("active");
        item?.classList.add("active");
        paint(figure, map, label);
        current = label;
      }
    });
    stage.addEventListener("mouseleave", async () => {
      tooltip.hidden = true;
      output.textContent = "";
      figure.querySelector(".legend li.active")?.classList.remove("active");
      current = null;
      const map = await labelMap(figure);
      if (map) paint(figure, map, -1);
    });
  }
})();
