// The study page: a study (or series) from the configured PACS, every slice's answer and the study summary.
// Plain JavaScript against the gateway's own API; values are set as text, never as HTML.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);
  const percent = (value) => (100 * value).toFixed(1) + "%";

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function line(parent, text) {
    const p = document.createElement("p");
    p.textContent = text;
    parent.appendChild(p);
    return p;
  }

  function showError(error) {
    const box = byId("study-message");
    box.textContent = error.code + ": " + error.message;
    box.hidden = false;
  }

  function reset() {
    for (const id of ["study-message", "study-summary", "study-slices", "study-skipped", "study-reports"]) {
      byId(id).hidden = true;
    }
    byId("study-slices").querySelector("tbody").replaceChildren();
    for (const id of ["study-summary", "study-skipped", "study-reports"]) {
      byId(id).replaceChildren();
    }
  }

  function render(body) {
    const summary = byId("study-summary");
    const s = body.summary;
    const finding = s.label === null ? "no slice classified" : s.label;
    const head = line(summary, "Study summary: " + finding + (s.probability ? " (" + percent(s.probability) + ")" : ""));
    head.className = "study-finding";
    head.dataset.label = s.label || "";
    const counts = Object.entries(s.slices_per_label).map(([label, n]) => label + " " + n).join(", ");
    line(summary, s.classified + " slices classified (" + counts + "), " + s.referred + " to refer, " +
      s.skipped + " skipped. Model " + body.model + " version " + body.version + ".");
    summary.hidden = false;

    const rows = byId("study-slices").querySelector("tbody");
    body.slices.forEach((item, index) => {
      const row = document.createElement("tr");
      row.dataset.sop = item.sop_instance_uid;
      cell(row, String(index + 1));
      cell(row, item.sop_instance_uid);
      cell(row, item.frame === null ? "" : String(item.frame));
      cell(row, item.label).className = "study-label";
      cell(row, percent(item.probabilities[item.label]));
      cell(row, (item.prediction_set || []).join(", "));
      cell(row, item.referral ? "yes: " + item.referral_reason : "no");
      rows.appendChild(row);
    });
    byId("study-slices").hidden = body.slices.length === 0;

    const skipped = byId("study-skipped");
    for (const item of body.skipped) {
      const why = item.reason === "NOT_MR" ? "not MR (" + (item.modality || "unknown") + ")" : item.reason;
      line(skipped, "Skipped " + item.sop_instance_uid + (item.frame === null ? "" : " frame " + item.frame) + ": " + why);
    }
    skipped.hidden = body.skipped.length === 0;

    const reports = byId("study-reports");
    for (const report of body.reports) {
      const p = line(reports, "Structured Report for series " + report.source_series_instance_uid + ": ");
      if (report.stored) {
        const link = document.createElement("a");
        link.href = "/v1/reports/" + encodeURIComponent(report.sop_instance_uid);
        link.textContent = report.sop_instance_uid;
        p.appendChild(link);
      } else {
        p.appendChild(document.createTextNode(report.sop_instance_uid + " (not stored)"));
      }
    }
    reports.hidden = body.reports.length === 0;
  }

  async function open(study, series, model) {
    reset();
    const params = new URLSearchParams({ model });
    if (series) params.set("series", series);
    byId("study-open").disabled = true;
    try {
      const response = await fetch("/v1/studies/" + encodeURIComponent(study) + "/classify?" + params, {
        method: "POST",
      });
      const body = await response.json().catch(() => null);
      if (response.ok && body) {
        render(body);
      } else {
        showError((body && body.error) || { code: "HTTP_" + response.status, message: "No explanation given." });
      }
    } catch (err) {
      showError({ code: "NETWORK", message: "The API did not answer: is the gateway running?" });
    } finally {
      byId("study-open").disabled = false;
    }
  }

  byId("study-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const study = byId("study-uid").value.trim();
    const series = byId("series-uid").value.trim();
    const model = byId("study-model").value;
    // The address opens the same study again (a link a colleague can follow).
    const query = new URLSearchParams({ study, model, ...(series ? { series } : {}) });
    history.replaceState(null, "", "?" + query);
    open(study, series, model);
  });

  // /study?study=<UID>[&series=<UID>][&model=...] opens the study at once.
  const given = new URLSearchParams(location.search);
  if (given.get("study")) {
    byId("study-uid").value = given.get("study");
    byId("series-uid").value = given.get("series") || "";
    if (given.get("model")) byId("study-model").value = given.get("model");
    open(given.get("study"), given.get("series"), byId("study-model").value);
  }
})();
