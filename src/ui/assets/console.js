// Unwind console: the live rollback page. Follows the rollback's event stream (same events as
// GET /v1/rollbacks/{id}/events: the whole rollback, then changes) and updates the status and
// the changed step rows in place; reloads the page when a decision is needed or taken, or when
// the rollback ends, so the server renders the buttons and the evidence. Without scripts the
// page refreshes itself instead.
(function () {
  "use strict";
  var root = document.querySelector("[data-events]");
  if (!root || !window.EventSource) { return; }
  var TERMINAL = ["completed", "partial", "failed", "aborted", "superseded"];
  var shown = root.getAttribute("data-status");
  var live = document.getElementById("live");
  var source = new EventSource(root.getAttribute("data-events"));

  function badge(cell, value) {
    var span = document.createElement("span");
    span.className = "badge s-" + value;
    span.textContent = String(value).replace(/_/g, " ");
    cell.replaceChildren(span);
  }

  function field(row, name) {
    return row.querySelector('[data-field="' + name + '"]');
  }

  // `rollback` carries the whole rollback (the first and the last event), `rollback.delta`
  // its status and only the steps that changed; both update the page the same way.
  function update(event) {
    var r;
    try { r = JSON.parse(event.data); } catch (e) { return; }
    var status = document.getElementById("rollback-status");
    if (status) { badge(status, r.status); }
    (r.steps || []).forEach(function (step) {
      var row = root.querySelector('tr[data-checkpoint="' + CSS.escape(step.checkpoint_id) + '"]');
      if (!row) { return; }
      var cell = field(row, "prepare_status");
      if (cell) { badge(cell, step.prepare_status); }
      cell = field(row, "execute_status");
      if (cell) { badge(cell, step.execute_status); }
      cell = field(row, "attempts");
      if (cell) { cell.textContent = step.attempts; }
      cell = field(row, "error");
      if (cell) { cell.textContent = step.error ? step.error.code + ": " + step.error.detail : ""; }
    });
    if (live) {
      live.textContent = "Live: " + r.status.replace(/_/g, " ") + ", updated " +
        new Date().toLocaleTimeString();
    }
    var decisionChanged = (r.status === "awaiting_decision") !== (shown === "awaiting_decision");
    if (r.status !== shown && (decisionChanged || TERMINAL.indexOf(r.status) >= 0)) {
      source.close();
      window.location.reload();
    }
  }
  source.addEventListener("rollback", update);
  source.addEventListener("rollback.delta", update);

  // Either the coordinator's `event: error` (it carries a problem) or a dropped connection,
  // which EventSource retries by itself.
  source.addEventListener("error", function (event) {
    if (!live) { return; }
    if (event.data) {
      var problem = {};
      try { problem = JSON.parse(event.data); } catch (e) { problem = {}; }
      live.textContent = "The live view stopped: " + (problem.code || "error") + ". Reload to retry.";
      source.close();
    } else {
      live.textContent = "Connection lost; reconnecting…";
    }
  });
})();
