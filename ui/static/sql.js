// meshlens dashboard, SQL console: the tables' columns at hand, a query box, results as a
// table, CSV download and the collector's error messages as they are. Values are text.
"use strict";

const sqlConsole = { loaded: false };

async function loadTables() {
  const box = $("sql-tables");
  try {
    const response = await fetch("/api/v1/sql/tables");
    const { tables, limits } = await response.json();
    box.replaceChildren();
    for (const t of tables) {
      const details = document.createElement("details");
      details.open = t.name === "spans" || t.name === "edges";
      const summary = document.createElement("summary");
      summary.textContent = t.name;
      summary.title = t.about;
      const list = document.createElement("ul");
      for (const c of t.columns) {
        const li = document.createElement("li");
        li.textContent = `${c.name} · ${c.type}`;
        li.title = c.doc;
        list.appendChild(li);
      }
      details.append(summary, list);
      box.appendChild(details);
    }
    const hint = document.createElement("p");
    hint.className = "hint";
    hint.textContent = `Read-only; each query stops after ${limits.timeout_ms / 1000}s, ${Math.round(limits.memory_bytes / 1048576)} MiB or ${limits.max_rows} rows.`;
    box.appendChild(hint);
    sqlConsole.loaded = true;
  } catch (err) {
    box.textContent = `cannot list the tables: ${err.message}`;
  }
}

async function runSql(format) {
  const query = $("sql-query").value;
  const error = $("sql-error");
  error.hidden = true;
  $("sql-status").textContent = "running…";
  const response = await fetch("/api/v1/sql", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ query, format }),
  }).catch((err) => ({ ok: false, status: 0, json: async () => ({ error: err.message }) }));
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    error.textContent = body.error || `HTTP ${response.status}`;
    error.hidden = false;
    $("sql-status").textContent = "";
    return null;
  }
  return response;
}

async function runQuery() {
  const response = await runSql("json");
  if (!response) return;
  const result = await response.json();
  const table = $("sql-results");
  const head = document.createElement("tr");
  for (const c of result.columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    th.title = c.type;
    head.appendChild(th);
  }
  table.tHead.replaceChildren(head);
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const r of result.rows) {
    const tr = document.createElement("tr");
    for (const v of r) cell(tr, v === null ? "NULL" : typeof v === "string" ? v : JSON.stringify(v));
    body.appendChild(tr);
  }
  $("sql-status").textContent = `${result.row_count} rows${result.truncated ? " (cut at the row limit)" : ""} in ${result.elapsed_ms.toFixed(1)} ms`;
}

async function downloadCsv() {
  const response = await runSql("csv");
  if (!response) return;
  const blob = await response.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "meshlens-query.csv";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  $("sql-status").textContent = "CSV downloaded";
}

// Listening from the start: a link to the tab (#tab=sql) opens it while the page loads.
document.addEventListener("meshlens:tab", (e) => {
  if (e.detail === "sql" && !sqlConsole.loaded) loadTables();
});

window.addEventListener("DOMContentLoaded", () => {
  $("sql-run").addEventListener("click", runQuery);
  $("sql-csv").addEventListener("click", downloadCsv);
  $("sql-query").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      runQuery();
    }
  });
});
