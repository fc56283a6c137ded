// Injected into the exported deck by tests/fit.rs and run by headless Chromium once the page
// (images included) has loaded. It measures every slide and writes one line per finding into
// a <pre> with the id fit-report, the last element of the page, which the test reads back
// from the dumped DOM.
//
// All sizes are in slide pixels: the slide is 1280×720 whatever the window's size.
window.addEventListener("load", () => document.fonts.ready.then(measure));

// Lays nothing out itself: only reads the layout the browser made.
function measure() {
  const lines = [];
  const SLIDE_W = 1280;
  const SLIDE_H = 720;
  document.querySelectorAll("svg > foreignObject > section").forEach((section, index) => {
    const n = index + 1;
    const box = section.getBoundingClientRect();
    const scale = box.height / SLIDE_H;
    let bottom = 0;
    let right = 0;
    let smallest = Infinity;
    for (const el of section.querySelectorAll("*")) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      bottom = Math.max(bottom, (r.bottom - box.top) / scale);
      right = Math.max(right, (r.right - box.left) / scale);
      // A box that clips its own content (a code block with a long line) hides text too.
      const style = getComputedStyle(el);
      if (style.overflowX !== "visible" && el.scrollWidth > el.clientWidth + 1) {
        lines.push(`slide ${n} clipped ${el.tagName.toLowerCase()} ${el.scrollWidth - el.clientWidth}`);
      }
      if (style.overflowY !== "visible" && el.scrollHeight > el.clientHeight + 1) {
        lines.push(`slide ${n} clipped ${el.tagName.toLowerCase()} ${el.scrollHeight - el.clientHeight}`);
      }
      // A box may be narrower than its text (a line that does not wrap runs out of it):
      // the glyphs themselves, line by line, are what the projector shows.
      for (const node of el.childNodes) {
        if (node.nodeType !== 3 || node.textContent.trim() === "") continue;
        const range = document.createRange();
        range.selectNodeContents(node);
        for (const g of range.getClientRects()) {
          if (g.width === 0) continue;
          bottom = Math.max(bottom, (g.bottom - box.top) / scale);
          right = Math.max(right, (g.right - box.left) / scale);
        }
      }
      const hasText = [...el.childNodes].some((c) => c.nodeType === 3 && c.textContent.trim() !== "");
      if (hasText && el.offsetHeight > 0) {
        // Marp shrinks a code block too wide for the slide with a transform, which the
        // computed font size does not show: scale it by how tall the box is drawn.
        const drawn = r.height / el.offsetHeight / scale;
        smallest = Math.min(smallest, parseFloat(style.fontSize) * drawn);
      }
    }
    // Each code block: how much Marp shrank it to fit (a line too long for the slide), and
    // its longest line against the room the block gives it (the box less its padding).
    // Marp draws a code block as <marp-pre>, its content scaled down inside.
    for (const pre of section.querySelectorAll("pre, marp-pre")) {
      const code = pre.querySelector("code") || pre;
      const shrunk = code.getBoundingClientRect().height / code.offsetHeight / scale;
      const r = pre.getBoundingClientRect();
      const style = getComputedStyle(pre);
      const padding = parseFloat(style.paddingRight) + parseFloat(style.borderRightWidth);
      const room = r.right - padding * scale;
      let text = -Infinity;
      const walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
      for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const range = document.createRange();
        range.selectNodeContents(node);
        for (const g of range.getClientRects()) {
          if (g.width > 0) text = Math.max(text, g.right);
        }
      }
      if (text !== -Infinity) {
        const at = (x) => ((x - box.left) / scale).toFixed(1);
        lines.push(`slide ${n} code ${shrunk.toFixed(3)} ${at(text)} ${at(room)}`);
      }
    }
    lines.push(`slide ${n} extent ${right.toFixed(1)} ${bottom.toFixed(1)} ${SLIDE_W} ${SLIDE_H}`);
    if (smallest !== Infinity) lines.push(`slide ${n} text ${smallest.toFixed(1)}`);
    for (const img of section.querySelectorAll("img")) {
      const r = img.getBoundingClientRect();
      const loaded = img.complete && img.naturalWidth > 0;
      lines.push(
        `slide ${n} image ${loaded ? "ok" : "broken"} ${(r.width / scale).toFixed(1)} ${img.getAttribute("src")}`,
      );
    }
  });
  const pre = document.createElement("pre");
  pre.id = "fit-report";
  pre.textContent = "\n" + lines.join("\n") + "\n";
  document.body.appendChild(pre);
}
