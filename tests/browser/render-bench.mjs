// Times the dashboard in Debian's chromium (headless) against a collector holding a large
// mesh: first render of the graph, one refresh's redraw, and one zoom and pan step
// (handler plus the layout it forces). Prints JSON. Run by `meshlens bench ui`.
//
//   node tests/browser/render-bench.mjs http://127.0.0.1:16686 300
import { chromium } from "playwright-core";

const [base, nodes] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));
const started = Date.now();
await page.goto(`${base}/`);
await page.waitForFunction((n) => document.querySelectorAll("#graph g.node").length >= n, Number(nodes), { timeout: 60000, polling: 10 });
const firstRenderMs = Date.now() - started;
const figures = await page.evaluate(async () => {
  const svg = document.getElementById("graph");
  const r = svg.getBoundingClientRect();
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const redraw = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    render(state.view);
    svg.getBBox();
    redraw.push(performance.now() - t);
  }
  const zoom = [];
  for (let i = 0; i < 20; i++) {
    const t = performance.now();
    svg.dispatchEvent(new WheelEvent("wheel", { deltaY: i < 10 ? -100 : 100, clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, bubbles: true, cancelable: true }));
    svg.getBBox();
    svg.getBoundingClientRect();
    zoom.push(performance.now() - t);
  }
  const frames = [];
  for (let i = 0; i < 10; i++) {
    const t = performance.now();
    svg.dispatchEvent(new WheelEvent("wheel", { deltaY: -50, clientX: r.left + 100, clientY: r.top + 100, bubbles: true, cancelable: true }));
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    frames.push(performance.now() - t);
  }
  return {
    nodes: state.view.nodes.length,
    edges: state.view.edges.length,
    redraw_ms: median(redraw),
    zoom_step_ms: median(zoom),
    zoom_frame_ms: median(frames),
  };
});
await browser.close();
console.log(JSON.stringify({ first_render_ms: firstRenderMs, ...figures, page_errors: errors }));
