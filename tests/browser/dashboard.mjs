// Drives the meshlens dashboard in Debian's chromium (playwright-core, headless) against a
// running demo: the graph's nodes and edges, an edge's panel with data, a node's sidecars, a trace as a
// waterfall, an SQL query's rows and error, and the XSS probe shown as text. Screenshots go
// to the artifacts directory. Exits non-zero with the failures listed.
//
//   node tests/browser/dashboard.mjs http://127.0.0.1:16686 target/browser-artifacts '<img src=x onerror=alert(1)>'
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, artifacts, probe] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); console.log(`${ok ? "ok  " : "FAIL"} ${what}`); };

const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
// A loaded 2-core CI machine builds and tests in parallel: wait generously, never forever.
page.setDefaultTimeout(30000);
const dialogs = [];
page.on("dialog", async (d) => { dialogs.push(d.message()); await d.dismiss(); });
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
const panelQueries = [];
page.on("request", (r) => {
  if (r.url().endsWith("/api/v1/sql") && r.postData()?.includes("FROM spans")) panelQueries.push(JSON.parse(r.postData()).query);
});
const shot = (name) => page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });

try {
  // The live graph: the demo's services and edges.
  await page.goto(base);
  await page.waitForFunction(() => document.querySelectorAll("#graph g.edge").length >= 8, null, { timeout: 30000 });
  const labels = await page.$$eval("#graph g.node text", (ts) => ts.map((t) => t.textContent));
  for (const s of ["frontend", "catalog", "reviews", "ratings", "inventory", "checkout", "payments"]) check(labels.includes(s), `node ${s} is drawn`);
  const edgeIds = await page.$$eval("#graph g.edge", (gs) => gs.map((g) => g.dataset.id));
  check(edgeIds.includes("checkout.shop->payments.shop"), "edge checkout → payments is drawn");
  await shot("topology");

  // A node's colour counts every attempt it received, an edge's what its caller got: 10
  // retries of 100 requests that all succeeded in the end are 10 failed attempts of 110.
  const retried = { requests: 100, retries: 10, error_ratio: 0, actual_success_ratio: 100 / 110 };
  const colours = await page.evaluate((t) => [health(t, "service", true), health(t, "service")], retried);
  check(colours[0] === "bad" && colours[1] === "ok", `retries hide no failure of the node they were made to (${colours})`);

  // Find dims the others; hide takes the healthy ones away.
  await page.fill("#find", "pay");
  check(await page.$$eval("#graph g.node.dim", (n) => n.length) >= 5, "find dims the nodes that do not match");
  await page.fill("#find", "");
  const before = await page.getAttribute("#graph", "viewBox");
  await page.hover("#graph", { position: { x: 300, y: 200 } });
  await page.mouse.wheel(0, -300);
  await page.waitForFunction((b) => document.querySelector("#graph").getAttribute("viewBox") !== b, before);
  check(true, "the wheel zooms the graph");
  await page.dblclick("#graph", { position: { x: 5, y: 5 } });

  // An edge's panel: figures, charts, response codes, busiest operations.
  await page.dispatchEvent('#graph g.edge[data-id="checkout.shop->payments.shop"]', "click");
  await page.waitForFunction(() => document.querySelector("#detail-title").textContent.includes("payments"));
  await page.waitForFunction(() => document.querySelectorAll("#charts .chart polyline").length === 5);
  check((await page.textContent("#charts")).includes("p90"), "the latency chart draws p50, p90 and p99");
  await page.waitForFunction(() => document.querySelectorAll("#ops-table tr").length > 0, null, { timeout: 30000 });
  const detail = await page.$$eval("#detail-table tr", (rows) => rows.map((r) => r.textContent));
  const requests = detail.map((r) => /^Requests\s*([\d,]+)/.exec(r)).find((m) => m);
  check(requests && Number(requests[1].replaceAll(",", "")) > 0, `the edge panel counts requests (${detail[1]})`);
  check(await page.$$eval("#codes-table tr", (r) => r.length) >= 1, "the edge panel breaks responses down by code");
  check(page.url().includes("select=edge"), "the selection is in the URL");
  await page.waitForFunction(() => document.querySelectorAll("#slowest-table tr").length > 0 && document.querySelectorAll("#recent-table tr").length > 0, null, { timeout: 30000 });
  check(true, "the edge panel lists its recent and slowest traces");
  const unbounded = panelQueries.filter((q) => !/start_time >= to_timestamp_millis\(\d+\)/.test(q));
  const covered = panelQueries.length >= 3 && unbounded.length === 0;
  check(covered, `the panel's lists cover the graph's window (${unbounded[0] ?? panelQueries.length})`);
  await shot("edge-panel");

  // The frontend's sidecar retries checkout's 502s: that edge's panel counts the retries.
  await page.dispatchEvent('#graph g.edge[data-id="frontend.shop->checkout.shop"]', "click");
  const retriesRow = () => [...document.querySelectorAll("#detail-table tr")].some((r) => /^Retries\s*[1-9]/.test(r.textContent));
  await page.waitForFunction(retriesRow, null, { timeout: 30000 });
  check(true, "the edge panel counts the retries on frontend → checkout");
  // Every retry followed a failed attempt, so fewer than all attempts succeeded.
  const actual = await page.$$eval("#detail-table tr", (rows) =>
    rows.map((r) => /^Actual success\s*([\d.]+)% of attempts/.exec(r.textContent)).find((m) => m)?.[1]);
  check(actual !== undefined && Number(actual) < 100, `the edge panel shows the success of every attempt (${actual} %)`);
  // A node's panel: what its sidecars cost, per instance: the demo's payments sidecar (a
  // process of its own) and the two instances whose figures the test sent.
  await page.dispatchEvent('#graph g.node[data-id="payments.shop"]', "click");
  const sidecars = () => [...document.querySelectorAll("#sidecars-table tr")].map((r) => r.textContent).join(" | ");
  await page.waitForFunction(() => /Instances\s*3/.test(document.querySelector("#sidecars-table").textContent), null, { timeout: 30000 });
  const costs = await page.evaluate(sidecars);
  const memory = Number(/Memory\s*([\d.]+) MiB/.exec(costs)?.[1]);
  const sent = costs.includes("payments-pod-10.10 cores · 24.0 MiB");
  check(sent && memory > 32, `the node panel shows its sidecars' CPU and memory (${costs})`);
  check(costs.includes("5f0c8a0e…– · 8.0 MiB"), `a drawn instance ID is shortened, and a CPU rate not yet known shows as – (${costs})`);
  await shot("node-panel");

  // Grouped by version: an edge to one of reviews' versions is named as people write it, and
  // its lists hold the spans towards that version, as do a version's own.
  await page.selectOption("#group", "version");
  const canary = "version:catalog.shop:v1->version:reviews.shop:v2";
  await page.waitForSelector(`#graph g.edge[data-id="${canary}"]`);
  await page.dispatchEvent(`#graph g.edge[data-id="${canary}"]`, "click");
  await page.waitForFunction(() => document.querySelectorAll("#ops-table tr").length > 0, null, { timeout: 30000 });
  const canaryTitle = await page.textContent("#detail-title");
  const canaryOps = await page.$$eval("#ops-table tr", (rows) => rows.map((r) => r.firstChild.textContent));
  check(canaryTitle === "catalog.shop v1 → reviews.shop v2" && canaryOps.join() === "GET /reviews",
    `a version's edge is named by its versions and lists its spans (${canaryTitle}: ${canaryOps})`);
  const names = await page.$$eval("#edges tbody tr", (rows) => rows.map((r) => r.firstChild.textContent));
  check(names.includes("reviews.shop v3") && !names.some((n) => n.startsWith("version:")), `the edge table names versions (${names})`);
  await page.dispatchEvent('#graph g.node[data-id="version:reviews.shop:v2"]', "click");
  await page.waitForFunction(() => document.querySelector("#detail-title").textContent === "reviews.shop v2");
  await page.waitForFunction(() => document.querySelectorAll("#ops-table tr").length > 1, null, { timeout: 30000 });
  const ownOps = await page.$$eval("#ops-table tr", (rows) => rows.map((r) => r.firstChild.textContent).sort());
  check(ownOps.join() === "GET /ratings,GET /reviews", `a version's lists hold its own spans (${ownOps})`);
  await page.selectOption("#group", "service");
  await page.waitForSelector('#graph g.edge[data-id="checkout.shop->payments.shop"]');
  await page.dispatchEvent('#graph g.edge[data-id="checkout.shop->payments.shop"]', "click");
  await page.waitForFunction(() => document.querySelector("#detail-title").textContent.includes("payments"));
  check(await page.evaluate(() => document.querySelector("#sidecars-title").hidden), "an edge's panel has no sidecars section");

  // One click to the edge's traces, then a trace as a waterfall.
  await page.click("#detail-traces");
  await page.waitForFunction(() => document.querySelectorAll("#ts-results tbody tr").length > 0, null, { timeout: 30000 });
  check(await page.$$eval("#ts-scatter circle", (c) => c.length) > 0, "search results are plotted");
  const axis = await page.$$eval("#ts-scatter .axis", (t) => t.map((x) => x.textContent));
  check(axis.length >= 2 && /\d:\d\d/.test(axis[1]), `the plot's axes show the longest duration and when traces started (${axis})`);
  await page.selectOption("#ts-lookback", "custom");
  await page.evaluate(() => { document.querySelector("#ts-status").textContent = ""; document.querySelector("#ts-results tbody").replaceChildren(); });
  await page.click('#trace-search button[type="submit"]');
  await page.waitForFunction(() => /^\d+ traces$/.test(document.querySelector("#ts-status").textContent));
  check(await page.$$eval("#ts-results tbody tr", (r) => r.length) > 0, "a custom time range finds the traces too");
  await page.selectOption("#ts-lookback", "1h");
  await page.click("#ts-results tbody tr");
  await page.waitForFunction(() => document.querySelectorAll("#tv-waterfall .span-row[data-span]").length >= 2, null, { timeout: 30000 });
  check(await page.$$eval("#tv-waterfall .bar.critical", (b) => b.length) >= 1, "the critical path is marked");
  const ticks = await page.$$eval("#tv-waterfall .ruler .tick", (t) => t.map((x) => x.textContent));
  const title = await page.textContent("#tv-title");
  const ruled = ticks.length === 5 && ticks[0] === "0 ms" && title.includes(` · ${ticks[4]} · `);
  check(ruled, `the time ruler runs to the trace's duration (${ticks}; ${title})`);
  const durationLabels = await page.$$eval("#tv-waterfall .bar-label", (l) => l.length);
  check(durationLabels === await page.$$eval("#tv-waterfall .bar", (b) => b.length), "each span's bar is labelled with its duration");
  await page.click("#tv-waterfall .span-row:nth-child(2)");
  await page.waitForFunction(() => document.querySelector("#tv-detail").textContent.includes("Attributes"));
  check((await page.textContent("#tv-detail")).includes("http.request.method"), "span details show attributes");
  await shot("trace");

  // A retried request: its span counts the retries, and its attempts are told apart.
  await page.selectOption("#ts-service", "frontend");
  await page.fill("#ts-tags", "meshlens.retry.count=1");
  await page.evaluate(() => document.querySelector("#ts-results tbody").replaceChildren());
  await page.click('#trace-search button[type="submit"]');
  await page.waitForFunction(() => document.querySelectorAll("#ts-results tbody tr").length > 0, null, { timeout: 30000 });
  await page.click("#ts-results tbody tr");
  await page.waitForFunction(() => [...document.querySelectorAll("#tv-waterfall .retry-note")].some((n) => n.textContent === "attempt 2"), null, { timeout: 30000 });
  const notes = await page.$$eval("#tv-waterfall .retry-note", (n) => n.map((x) => x.textContent));
  check(notes.includes("1 retry") && notes.includes("attempt 1") && notes.includes("attempt 2"), `a retried request's spans are marked (${notes})`);
  check((await page.textContent("#tv-detail")).trim() === "", "the span details of the trace opened before are gone");
  await shot("retried-trace");

  // SQL: rows, and a refused statement's message.
  await page.click('#tabs button[data-tab="sql"]');
  await page.waitForFunction(() => document.querySelectorAll("#sql-tables details").length === 4);
  const inUrl = page.url().endsWith("#tab=sql") && await page.isHidden("#graph-controls");
  check(inUrl, `the SQL tab is in the URL, the graph's controls hidden (${page.url()})`);
  await page.fill("#sql-query", "SELECT service, count(*) AS spans FROM spans GROUP BY service ORDER BY spans DESC");
  await page.click("#sql-run");
  await page.waitForFunction(() => document.querySelectorAll("#sql-results tbody tr").length > 0);
  const header = await page.$$eval("#sql-results thead th", (h) => h.map((x) => x.textContent));
  check(header.join(",") === "service,spans", `SQL results have the query's columns (${header})`);
  await shot("sql");
  await page.fill("#sql-query", "DROP TABLE spans");
  await page.click("#sql-run");
  await page.waitForSelector("#sql-error:not([hidden])");
  check((await page.textContent("#sql-error")).includes("DROP TABLE"), "a refused statement's reason is shown");

  // The XSS probe: a service and a span named with markup show as those characters.
  await page.click('#tabs button[data-tab="topology"]');
  await page.waitForFunction((p) => [...document.querySelectorAll("#graph g.node text")].some((t) => t.textContent === p), probe, { timeout: 30000 });
  check(await page.$$eval("img", (imgs) => imgs.length) === 0, "no <img> element was created from telemetry");
  await page.click('#tabs button[data-tab="traces"]');
  await page.waitForFunction((p) => [...document.querySelectorAll("#ts-service option")].some((o) => o.value === p), probe, { timeout: 30000 });
  await page.selectOption("#ts-service", probe);
  await page.fill("#ts-tags", "");
  await page.click('#trace-search button[type="submit"]');
  await page.waitForFunction(() => document.querySelectorAll("#ts-results tbody tr").length > 0);
  await page.click("#ts-results tbody tr");
  await page.waitForFunction(() => document.querySelector("#tv-waterfall").textContent.includes("alert(2)"));
  const waterfall = await page.textContent("#tv-waterfall");
  check(waterfall.includes("<script>alert(2)</script>") && waterfall.includes(probe), `span and service names stay text (${waterfall})`);
  await shot("xss-probe");
  check(await page.$$eval("script", (s) => s.every((x) => x.src.includes("/ui/"))), "no script element was created from telemetry");

  // A link to a tab opens it with its contents loaded.
  for (const [tab, loaded] of [["sql", "#sql-tables details"], ["traces", "#ts-service option"]]) {
    const linked = await browser.newPage();
    linked.on("pageerror", (e) => pageErrors.push(e.message));
    await linked.goto(`${base}/#tab=${tab}`);
    const ok = await linked.waitForFunction((s) => document.querySelectorAll(s).length > 0, loaded, { timeout: 30000 })
      .then(() => true, () => false);
    check(ok && await linked.isVisible(`#tab-${tab}`), `a link to #tab=${tab} opens that tab with its contents loaded`);
    await linked.close();
  }
  check(dialogs.length === 0, `no dialog was opened (${dialogs})`);
  check(pageErrors.length === 0, `no page errors (${pageErrors})`);
} catch (err) {
  failures.push(`exception: ${err.message.split("\n")[0]} (at ${err.stack?.split("\n").find((l) => l.includes("dashboard.mjs"))?.trim()})`);
  await shot("failure").catch(() => {});
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(`${failures.length} failure(s):\n${failures.join("\n")}`);
  process.exit(1);
}
console.log("all browser checks passed");
