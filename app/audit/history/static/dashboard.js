// The security team's dashboard: a static page over the JSON API (/api/audit/...).
// The access token lives in sessionStorage: gone when the tab closes, never in a URL.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { token: sessionStorage.getItem("audit-token"), cursor: null, adminCursor: null, chart: null };

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && path !== "/api/auth/login") {
    signOut();
    throw new Error("Please sign in again.");
  }
  return response;
}

async function json(path, options) {
  const response = await api(path, options);
  const body = await response.json();
  if (!response.ok) {
    const fields = (body.errors || []).map((e) => `${e.field}: ${e.message}`).join("; ");
    throw new Error(fields || body.message || `HTTP ${response.status}`);
  }
  return body;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

function fillTable(selector, rows, columns) {
  const body = $(`${selector} tbody`);
  body.replaceChildren();
  for (const item of rows) {
    const row = document.createElement("tr");
    for (const [key, className] of columns) cell(row, typeof key === "function" ? key(item) : item[key], className);
    body.appendChild(row);
  }
}

function isoDaysAgo(days) {
  return new Date(Date.now() - days * 86400000).toISOString();
}

async function loadSummary() {
  const days = Number($("#period").value);
  const bucket = days > 7 ? "day" : "hour";
  const summary = await json(`/api/audit/summary?since=${encodeURIComponent(isoDaysAgo(days))}&bucket=${bucket}`);
  const t = summary.totals;
  $("#totals").textContent =
    `${t.attempts} attempts: ${t.successes} successes, ${t.failures} failures, ${t.refusals} refusals`;
  $("#channels").textContent = "By channel: " + summary.channels
    .map((c) => `${c.channel} ${c.attempts} (${c.successes} successes, ${c.failures} failures, ${c.refusals} refusals)`)
    .join("; ");
  drawChart(summary.buckets);
  const counts = [["failures", "num"], ["refusals", "num"], ["successes", "num"]];
  fillTable("#top-ips", summary.top_ips, [["client"], ...counts]);
  fillTable("#top-phones", summary.top_phone_numbers, [["phone_number"], ...counts]);
  fillTable("#pin-locked", summary.pin_locked, [["phone_number"], ["refused_attempts", "num"], ["last_at"]]);
}

function drawChart(buckets) {
  const xs = buckets.map((b) => Date.parse(b.start) / 1000);
  const data = [xs, buckets.map((b) => b.successes), buckets.map((b) => b.failures), buckets.map((b) => b.refusals)];
  const width = Math.max(320, $("#chart").clientWidth || 800);
  if (state.chart) state.chart.destroy();
  state.chart = new uPlot(
    {
      width,
      height: 260,
      series: [
        {},
        { label: "successes", stroke: "#1b7a3a", width: 2 },
        { label: "failures", stroke: "#b00020", width: 2 },
        { label: "refusals", stroke: "#d08000", width: 2 },
      ],
      axes: [{}, { label: "attempts" }],
    },
    data,
    $("#chart"),
  );
}

function filterParams() {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("#filters"))) {
    if (value) params.set(name, value);
  }
  return params;
}

async function loadAttempts(append) {
  $("#filter-error").textContent = "";
  const params = filterParams();
  params.set("limit", "50");
  if (append && state.cursor) params.set("cursor", state.cursor);
  try {
    const page = await json(`/api/audit/login-attempts?${params}`);
    const body = $("#attempts tbody");
    if (!append) body.replaceChildren();
    for (const item of page.items) {
      const row = document.createElement("tr");
      cell(row, item.created_at.replace("T", " ").slice(0, 19));
      cell(row, item.phone_number);
      cell(row, item.outcome, `outcome-${item.outcome === "success" ? "success" : item.outcome}`);
      cell(row, item.reason);
      cell(row, item.auth_method);
      cell(row, item.channel === "ussd" ? `ussd ${item.service_name || ""} ${item.session_id || ""}`.trim() : item.channel);
      cell(row, item.ip_address);
      cell(row, item.user_agent);
      body.appendChild(row);
    }
    state.cursor = page.next_cursor;
    $("#more").hidden = !page.next_cursor;
  } catch (error) {
    $("#filter-error").textContent = error.message;
  }
}

async function exportAs(format) {
  $("#filter-error").textContent = "";
  const params = filterParams();
  params.set("format", format);
  const response = await api(`/api/audit/login-attempts/export?${params}`);
  if (!response.ok) {
    $("#filter-error").textContent = (await response.json()).message;
    return;
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = `login-attempts.${format === "csv" ? "csv" : "ndjson"}`;
  link.click();
  URL.revokeObjectURL(link.href);
}

// What support staff did to accounts (GET /api/audit/admin-actions), newest first.
async function loadAdminActions(append) {
  $("#admin-error").textContent = "";
  const params = new URLSearchParams({ limit: "20" });
  if (append && state.adminCursor) params.set("cursor", state.adminCursor);
  try {
    const page = await json(`/api/audit/admin-actions?${params}`);
    const body = $("#admin-actions tbody");
    if (!append) body.replaceChildren();
    for (const item of page.items) {
      const row = document.createElement("tr");
      cell(row, item.created_at.replace("T", " ").slice(0, 19));
      cell(row, `${item.actor} (${item.origin})`);
      cell(row, item.action);
      cell(row, item.target_user_id);
      cell(row, item.client_ip);
      cell(row, Object.keys(item.details).length ? JSON.stringify(item.details) : "");
      body.appendChild(row);
    }
    state.adminCursor = page.next_cursor;
    $("#admin-more").hidden = !page.next_cursor;
  } catch (error) {
    $("#admin-error").textContent = error.message;
  }
}

async function exportAdminActions() {
  $("#admin-error").textContent = "";
  const response = await api("/api/audit/admin-actions/export?format=csv");
  if (!response.ok) {
    $("#admin-error").textContent = (await response.json()).message;
    return;
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = "admin-actions.csv";
  link.click();
  URL.revokeObjectURL(link.href);
}

async function showDashboard() {
  $("#signin").hidden = true;
  $("#dashboard").hidden = false;
  $("#signout").hidden = false;
  try {
    await loadSummary();
    await loadAttempts(false);
    await loadAdminActions(false);
  } catch (error) {
    signOut(error.message);
  }
}

function signOut(message) {
  if (state.token) api("/api/auth/logout", { method: "POST" }).catch(() => {});
  state.token = null;
  sessionStorage.removeItem("audit-token");
  $("#dashboard").hidden = true;
  $("#signout").hidden = true;
  $("#signin").hidden = false;
  $("#who").textContent = "";
  $("#signin-error").textContent = message || "";
}

$("#signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("#signin-error").textContent = "";
  const form = new FormData(event.target);
  const response = await fetch("/api/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ phone_number: form.get("phone_number"), password: form.get("password") }),
  });
  const body = await response.json();
  if (!response.ok) {
    $("#signin-error").textContent = body.message;
    return;
  }
  if (!["security", "admin"].includes(body.user.role)) {
    state.token = body.access_token;
    signOut("This account is not a security team account.");
    return;
  }
  state.token = body.access_token;
  sessionStorage.setItem("audit-token", state.token);
  $("#who").textContent = `${body.user.name} (${body.user.role})`;
  showDashboard();
});

$("#filters").addEventListener("submit", (event) => {
  event.preventDefault();
  loadAttempts(false);
});
$("#more").addEventListener("click", () => loadAttempts(true));
$("#period").addEventListener("change", () => loadSummary().catch((e) => ($("#filter-error").textContent = e.message)));
$("#export-csv").addEventListener("click", () => exportAs("csv"));
$("#export-ndjson").addEventListener("click", () => exportAs("ndjson"));
$("#signout").addEventListener("click", () => signOut());
$("#admin-more").addEventListener("click", () => loadAdminActions(true));
$("#admin-export-csv").addEventListener("click", () => exportAdminActions());

if (state.token) showDashboard();
