// The comparison page: one upload, every model side by side, LIME on demand.
// Plain JavaScript against the gateway's own API; nothing is loaded from elsewhere.
"use strict";

(() => {
  const FALLBACK_MODELS = ["rf", "snn", "cnn", "mobilenetv2"];
  const MODEL_TITLES = {
    rf: "Random forest (extra trees)",
    snn: "Dense network (SNN)",
    cnn: "Small CNN",
    mobilenetv2: "MobileNetV2",
  };
  // The calibrated ensemble of the champions, shown as the consensus above the four cards when registered.
  const CONSENSUS_MODEL = "ensemble";

  const state = {
    config: null,
    models: FALLBACK_MODELS,
    classNames: ["notumor", "pituitary", "meningioma", "glioma"],
    catalog: null, // model -> ModelInfo from GET /v1/models
    file: null,
    run: 0, // bumps with every new file, so late answers for an old one are dropped
    results: {}, // model -> {ok, body} for the current file
    cards: {},
  };

  const byId = (id) => document.getElementById(id);

  // -- talking to the API ----------------------------------------------------------------------

  // Caller tokens (BT_GATEWAY_API_TOKENS): asked for at the first 401, kept for this tab only.
  const TOKEN_KEY = "bt-api-token";

  function withToken(options) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return options;
    return { ...options, headers: { ...(options.headers || {}), Authorization: "Bearer " + token } };
  }

  async function callApi(path, options = {}) {
    const started = performance.now();
    let response;
    try {
      response = await fetch(path, withToken(options));
      if (response.status === 401) {
        const token = window.prompt("This gateway needs an API token (ask its operator):");
        if (token) {
          sessionStorage.setItem(TOKEN_KEY, token.trim());
          response = await fetch(path, withToken(options));
        }
      }
    } catch (err) {
      return {
        ok: false,
        status: 0,
        ms: performance.now() - started,
        error: { code: "NETWORK", message: "The API did not answer: is the gateway running?" },
      };
    }
    const ms = performance.now() - started;
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (response.ok && body) {
      return { ok: true, status: response.status, ms, body };
    }
    const error = (body && body.error) || {
      code: "HTTP_" + response.status,
      message: "The API answered HTTP " + response.status + " without an explanation.",
    };
    return { ok: false, status: response.status, ms, error };
  }

  function formatWeight(weight) {
    const sign = weight >= 0 ? "+" : "−";
    const size = Math.abs(weight);
    return sign + (size >= 0.01 || size === 0 ? size.toFixed(3) : size.toExponential(1));
  }

  function formatDuration(ms) {
    return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(1) + " s";
  }

  function mib(bytes) {
    return (bytes / 1048576).toFixed(1) + " MiB";
  }

  // A headline a person can act on, followed by the API's own message (which says what is expected).
  function describeError(error, status) {
    const code = error.code || "";
    const message = error.message || "";
    switch (code) {
      case "INVALID_IMAGE":
        return "Not an image the models can read. " + message;
      case "UNSUPPORTED_DICOM":
        return "A DICOM file the models cannot read. " + message;
      case "NOT_A_BRAIN_MRI":
        // The guard refused the file before any model saw it: nothing to retry, another image is needed.
        return "Not a brain MRI slice: no tumour class is given for this image. " + message;
      case "FILE_TOO_LARGE": {
        const limit = error.details && error.details.max_bytes;
        return "File too large" + (limit ? " (at most " + mib(limit) + ")" : "") + ". " + message;
      }
      case "UPSTREAM_UNAVAILABLE":
      case "REGISTRY_UNAVAILABLE":
      case "MODEL_NOT_READY":
      case "EXPLAINER_BUSY":
        return "Model unavailable right now. " + message;
      case "MODEL_NOT_FOUND":
        return "Model not registered. " + message;
      case "VERSION_NOT_FOUND":
        return "Version not found. " + message;
      case "NETWORK":
        return message;
      default:
        return (status >= 500 ? "Model down or failing. " : "") + (message || code);
    }
  }

  function showMessage(text) {
    const box = byId("message");
    box.textContent = text;
    box.hidden = !text;
  }

  // -- the cards -------------------------------------------------------------------------------

  function buildCards() {
    const container = byId("cards");
    const template = byId("card-template");
    container.textContent = "";
    state.cards = {};
    const consensus = byId("consensus");
    consensus.textContent = "";
    for (const model of [CONSENSUS_MODEL, ...state.models]) {
      const node = template.content.firstElementChild.cloneNode(true);
      node.dataset.model = model;
      node.querySelector(".model-name").textContent =
        model === CONSENSUS_MODEL ? "Consensus: calibrated ensemble" : MODEL_TITLES[model] || model;
      node.querySelector(".model-name").title = model;
      const select = node.querySelector(".version-select");
      select.setAttribute("aria-label", "Version of " + model);
      addOption(select, "", "default");
      select.addEventListener("change", () => {
        if (state.file) {
          predictOne(model, state.run).then(updateSummary);
        }
      });
      node.querySelector(".explain-button").addEventListener("click", () => explainOne(model));
      setCardStatus(node, "idle", "Waiting for an image.");
      (model === CONSENSUS_MODEL ? consensus : container).appendChild(node);
      state.cards[model] = node;
    }
  }

  function addOption(select, value, text) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = text;
    select.appendChild(option);
  }

  function setCardStatus(card, cardState, text) {
    card.dataset.state = cardState;
    card.querySelector(".card-status").textContent = text;
  }

  // The consensus card shows only when an ensemble is registered; it names its members and their weights.
  function consensusRegistered() {
    return Boolean(state.catalog && state.catalog[CONSENSUS_MODEL]);
  }

  // Weights are those of the ensemble version that answered (versions may weigh their members differently).
  function describeMembers(members, version) {
    const info = state.catalog && state.catalog[CONSENSUS_MODEL];
    const listed = info && info.versions.find((v) => v.version === version);
    const weights = (listed && listed.weights) || {};
    return Object.entries(members || {})
      .map(([m, v]) => m + " v" + v + (m in weights ? " ×" + weights[m].toFixed(2) : ""))
      .join(", ");
  }

  function fillVersionPickers() {
    byId("consensus").hidden = !consensusRegistered();
    for (const model of [CONSENSUS_MODEL, ...state.models]) {
      const card = state.cards[model];
      const select = card.querySelector(".version-select");
      const chosen = select.value;
      select.textContent = "";
      const info = state.catalog && state.catalog[model];
      if (!info) {
        addOption(select, "", "default");
        if (state.catalog) {
          setCardStatus(card, "error", "Model not registered yet: train it first.");
        }
        continue;
      }
      addOption(select, "", "default (v" + info.default_version + ")");
      for (const version of info.versions) {
        const aliases = version.aliases.length ? " · " + version.aliases.join(", ") : "";
        const accuracy = version.metrics && version.metrics.test_accuracy;
        const metric = typeof accuracy === "number" ? " · acc " + accuracy.toFixed(2) : "";
        // Versions from the repository's pretrained bundle say so, and on what (the option's tooltip).
        const pretrained = version.pretrained_on ? " · pretrained" : "";
        addOption(select, version.version, "v" + version.version + aliases + metric + pretrained);
        if (version.pretrained_on) {
          select.options[select.options.length - 1].title = "pretrained on " + version.pretrained_on;
        }
      }
      const served = info.versions.find((v) => v.version === info.default_version);
      select.title = served && served.pretrained_on ? "pretrained on " + served.pretrained_on : "";
      select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
    }
  }

  function renderResult(card, body, roundTripMs) {
    card.querySelector(".result").hidden = false;
    const label = card.querySelector(".label");
    label.textContent = body.label;
    label.dataset.label = body.label;
    const top = body.probabilities[body.label];
    card.querySelector(".confidence").textContent = (100 * top).toFixed(1) + "%";
    const bars = card.querySelector(".bars");
    bars.textContent = "";
    for (const name of state.classNames) {
      const p = body.probabilities[name] || 0;
      const item = document.createElement("li");
      item.dataset.class = name;
      if (name === body.label) item.className = "winner";
      const caption = document.createElement("span");
      caption.textContent = name;
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.display = "block";
      fill.style.width = (100 * p).toFixed(1) + "%";
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = (100 * p).toFixed(1) + "%";
      item.append(caption, track, value);
      bars.appendChild(item);
    }
    card.querySelector(".version-served").textContent = body.version;
    card.querySelector(".latency").textContent = body.latency_ms.toFixed(1) + " ms";
    card.querySelector(".round-trip").textContent = roundTripMs.toFixed(0) + " ms";
    card.dataset.version = body.version;
    const members = card.querySelector(".members");
    members.hidden = !body.members;
    members.textContent = body.members ? "weighted mean of " + describeMembers(body.members, body.version) : "";
    // The classes the model cannot rule out (split-conformal set), and whether a radiologist should check.
    const set = card.querySelector(".prediction-set");
    set.hidden = !body.prediction_set;
    set.textContent = !body.prediction_set
      ? ""
      : body.prediction_set.length
        ? "Cannot rule out: " + body.prediction_set.join(" · ")
        : "No class is sure enough to answer.";
    const referral = card.querySelector(".referral");
    referral.hidden = !body.referral;
    referral.textContent = body.referral ? "Refer to a radiologist: " + body.referral_reason + "." : "";
    // The guard in flag mode answers, but says the image does not look like a brain MRI slice.
    const warning = card.querySelector(".ood-warning");
    const flagged = Boolean(body.ood && body.ood.flag);
    warning.hidden = !flagged;
    const why = flagged && body.ood.declared_modality
      ? "the DICOM file declares modality " + body.ood.declared_modality + ", not MR"
      : flagged ? "out-of-distribution score " + body.ood.score.toFixed(2) + " > " + body.ood.threshold.toFixed(2) : "";
    warning.textContent = flagged
      ? "This image does not look like a brain MRI slice (" + why + "): this class is not reliable."
      : "";
  }

  // The guard's verdict is about the file, not the models: said once for the page.
  function guardMessage(answers) {
    const refused = answers.find((a) => !a.ok && a.error.code === "NOT_A_BRAIN_MRI");
    if (refused) return describeError(refused.error, refused.status);
    const flagged = answers.some((a) => a.ok && a.body.ood && a.body.ood.flag);
    return flagged
      ? "This image does not look like a brain MRI slice: the classes below are not reliable."
      : "";
  }

  function resetExplanation(card) {
    const panel = card.querySelector(".explanation");
    panel.hidden = true;
    panel.querySelector(".overlay").removeAttribute("src");
    panel.querySelector(".regions").textContent = "";
    panel.querySelector(".opposing-regions").textContent = "";
    panel.querySelector(".explanation-caption").textContent = "";
    const button = card.querySelector(".explain-button");
    button.disabled = false;
    button.textContent = "Explain";
  }

  // -- predictions -----------------------------------------------------------------------------

  async function predictOne(model, run) {
    const card = state.cards[model];
    const version = card.querySelector(".version-select").value;
    resetExplanation(card);
    card.querySelector(".result").hidden = true;
    setCardStatus(card, "loading", "Classifying…");
    const form = new FormData();
    form.append("file", state.file, state.file.name || "scan");
    const query = new URLSearchParams({ model });
    if (version) query.set("version", version);
    const answer = await callApi("/v1/predict?" + query, { method: "POST", body: form });
    if (run !== state.run) return; // a newer file took over
    state.results[model] = answer;
    if (answer.ok) {
      setCardStatus(card, "done", "");
      renderResult(card, answer.body, answer.ms);
    } else {
      setCardStatus(card, "error", describeError(answer.error, answer.status));
    }
  }

  function updateSummary() {
    const badge = byId("agreement");
    const answers = state.models.map((m) => state.results[m]).filter(Boolean);
    if (answers.length < state.models.length) return;
    const labels = state.models
      .filter((m) => state.results[m].ok)
      .map((m) => state.results[m].body.label);
    const failures = answers.filter((a) => !a.ok);
    // The same client error from every model (not an image, too large) is the file's problem: say it once.
    const codes = new Set(failures.map((a) => a.error.code));
    const guarded = guardMessage(answers);
    if (guarded) {
      showMessage(guarded);
    } else if (!labels.length && codes.size === 1 && failures[0].status >= 400 && failures[0].status < 500) {
      showMessage(describeError(failures[0].error, failures[0].status));
    } else {
      showMessage("");
    }
    badge.hidden = false;
    if (!labels.length && codes.has("NOT_A_BRAIN_MRI")) {
      badge.dataset.state = "none";
      badge.textContent = "Refused: not a brain MRI slice";
    } else if (!labels.length) {
      badge.dataset.state = "none";
      badge.textContent = "No model answered";
    } else if (new Set(labels).size === 1) {
      badge.dataset.state = "agree";
      badge.textContent =
        labels.length === state.models.length
          ? "All " + labels.length + " models agree: " + labels[0]
          : "The " + labels.length + " models that answered agree: " + labels[0];
    } else {
      badge.dataset.state = "disagree";
      const counts = {};
      labels.forEach((l) => (counts[l] = (counts[l] || 0) + 1));
      badge.textContent =
        "Models disagree: " +
        Object.entries(counts)
          .map(([l, n]) => l + " ×" + n)
          .join(", ");
    }
    byId("status").textContent = failures.length
      ? failures.length + " of " + answers.length + " models failed"
      : "";
  }

  async function handleFile(file) {
    if (!file) return;
    state.file = file;
    state.run += 1;
    state.results = {};
    const run = state.run;
    showMessage("");
    byId("agreement").hidden = true;
    byId("status").textContent = "Classifying with " + state.models.length + " models…";
    const preview = byId("preview");
    const image = byId("preview-image");
    if (image.src) URL.revokeObjectURL(image.src);
    // Browsers cannot show a DICOM file: the services decode it (an explanation's overlay shows the slice).
    const dicom = /\.(dcm|dicom)$/i.test(file.name || "") || file.type === "application/dicom";
    image.hidden = dicom;
    if (dicom) image.removeAttribute("src");
    else image.src = URL.createObjectURL(file);
    byId("preview-caption").textContent =
      (file.name || "scan") + " · " + (file.size / 1024).toFixed(1) + " KiB" + (dicom ? " · DICOM, no preview" : "");
    preview.hidden = false;
    const consensus = consensusRegistered() ? [CONSENSUS_MODEL] : [];
    await Promise.all([...consensus, ...state.models].map((model) => predictOne(model, run)));
    if (run === state.run) {
      updateSummary();
      document.body.dataset.finished = String(run); // files fully answered so far (tests wait on it)
    }
  }

  // -- explanations ----------------------------------------------------------------------------

  function explanationCaption(body) {
    const hidden = { blur: "blurred", grey: "grey", black: "black" }[body.fill] || body.fill;
    const how =
      body.method === "lime"
        ? "LIME for “" + body.label + "”: random sets of regions " + hidden + " (" + body.num_samples +
          " copies, seed " + body.seed + "), a weighted linear fit with R² " + body.fit_r2.toFixed(2) + ". "
        : "Occlusion for “" + body.label + "”: a patch " + hidden + " slides over the head (" + body.num_samples +
          " copies); a region's weight is the mean drop in the class's log-odds where the patch hides it. ";
    return how + "Warm regions (outlined yellow) support the class, cool ones (outlined cyan) argue against it; " +
      body.num_segments + " regions of the head, " + formatDuration(body.latency_ms) + ".";
  }

  function fillRegions(list, regions) {
    for (const region of regions) {
      const item = document.createElement("li");
      item.textContent =
        "region " + region.segment + ": " + formatWeight(region.weight) +
        " (" + (100 * region.area_fraction).toFixed(1) + "% of the scan)";
      list.appendChild(item);
    }
    if (!regions.length) {
      const item = document.createElement("li");
      item.textContent = "none";
      list.appendChild(item);
    }
  }

  async function explainOne(model) {
    const card = state.cards[model];
    const result = state.results[model];
    if (!state.file || !result || !result.ok) return;
    const run = state.run;
    const button = card.querySelector(".explain-button");
    const panel = card.querySelector(".explanation");
    const caption = panel.querySelector(".explanation-caption");
    button.disabled = true;
    button.textContent = "Explaining…";
    card.dataset.explained = "running";
    panel.hidden = false;
    panel.querySelector(".overlay").removeAttribute("src");
    panel.querySelector(".regions").textContent = "";
    panel.querySelector(".opposing-regions").textContent = "";
    caption.textContent = "Classifying copies of the scan with regions hidden…";
    const form = new FormData();
    form.append("file", state.file, state.file.name || "scan");
    // Pin the version that answered, so the explanation is of that very model.
    const method = card.querySelector(".method-select").value;
    const query = new URLSearchParams({ model, version: result.body.version, method });
    const answer = await callApi("/v1/explain?" + query, { method: "POST", body: form });
    if (run !== state.run) return;
    button.disabled = false;
    button.textContent = "Explain again";
    if (!answer.ok) {
      caption.textContent = "No explanation: " + describeError(answer.error, answer.status);
      caption.classList.add("error");
      card.dataset.explained = "error";
      return;
    }
    caption.classList.remove("error");
    const body = answer.body;
    const overlay = panel.querySelector(".overlay");
    overlay.src = "data:image/png;base64," + body.overlay_png;
    overlay.width = body.overlay_width;
    overlay.height = body.overlay_height;
    caption.textContent = explanationCaption(body);
    fillRegions(panel.querySelector(".regions"), body.regions);
    fillRegions(panel.querySelector(".opposing-regions"), body.opposing_regions);
    card.dataset.method = body.method;
    card.dataset.explained = "done";
  }

  // -- start -----------------------------------------------------------------------------------

  function wireInput() {
    const input = byId("file-input");
    const zone = byId("drop-zone");
    input.addEventListener("change", () => {
      handleFile(input.files[0]);
      input.value = ""; // choosing the same file again still triggers a run
    });
    ["dragenter", "dragover"].forEach((type) =>
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      }),
    );
    ["dragleave", "drop"].forEach((type) =>
      zone.addEventListener(type, (event) => {
        event.preventDefault();
        zone.classList.remove("dragging");
      }),
    );
    zone.addEventListener("drop", (event) => {
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) handleFile(files[0]);
    });
  }

  async function loadConfig() {
    const answer = await callApi("/v1/config");
    if (!answer.ok) return;
    state.config = answer.body;
    state.models = answer.body.models;
    state.classNames = answer.body.class_names;
    const mlflow = byId("mlflow-link");
    mlflow.href = answer.body.mlflow_ui_url;
    mlflow.hidden = false;
    byId("docs-link").href = answer.body.docs_url;
    byId("size-hint").textContent = "up to " + mib(answer.body.max_upload_bytes);
  }

  async function loadCatalog() {
    const answer = await callApi("/v1/models");
    if (!answer.ok) {
      showMessage("The list of model versions is unavailable: " + describeError(answer.error, answer.status));
      return;
    }
    state.catalog = {};
    for (const info of answer.body.models) state.catalog[info.model] = info;
    fillVersionPickers();
    byId("served-models").textContent = describeServed();
  }

  // What each card serves by default, from the registry: pretrained (and on what) or trained here (on how many).
  function describeServed() {
    const parts = [];
    for (const model of [CONSENSUS_MODEL, ...state.models]) {
      const info = state.catalog[model];
      const served = info && info.versions.find((v) => v.version === info.default_version);
      if (!served) continue;
      const m = served.metrics || {};
      let origin;
      if (served.pretrained_on) {
        origin = "pretrained on " + served.pretrained_on;
      } else if (typeof m.train_images === "number") {
        origin = "trained here on " + m.train_images + " images" +
          (m.test_images ? ", tested on " + m.test_images : ", no test split of its own");
      } else {
        origin = "trained here";
      }
      parts.push(model + " v" + served.version + ": " + origin);
    }
    return parts.length ? "Served: " + parts.join("; ") + "." : "No model is registered yet.";
  }

  async function start() {
    await loadConfig();
    buildCards();
    wireInput();
    await loadCatalog();
    document.body.dataset.ready = "true";
  }

  start();
})();
