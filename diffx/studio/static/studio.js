// diffx studio: starts runs through the JSON API and draws each step as its Server-Sent Event arrives.
// Every picture comes from the server (the report's own frame functions); this script only places them.
"use strict";

const $ = (id) => document.getElementById(id);
const client = crypto.getRandomValues(new Uint32Array(2)).join("-");  // this tab: its new Run cancels its last
const FIELDS = ["prompt", "negative_prompt", "sampler", "steps", "guidance", "schedule", "spacing", "seed"];
const NUMBERS = new Set(["steps", "guidance", "seed"]);
const COLOURS = ["#d1495b", "#1b7f8c", "#e08e0b", "#5a8f3c", "#6a4c93", "#2e4057"];
let info = null;
let columns = [];        // the runs on screen: {id, label, colour, start, steps: [], source}
let shownStep = 0;       // 0-based step under the slider
let follow = true;       // the slider follows the newest step until the user moves it
let word = null;         // the clicked word, or null
let lastFinished = null; // the first column's run once it is done: what Edit and downloads use

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

async function api(path, body) {
  const response = await fetch(path, {method: "POST", headers: {"content-type": "application/json"},
                                      body: JSON.stringify({client, ...body})});
  const answer = await response.json().catch(() => ({error: `the server answered ${response.status}`}));
  if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
  return answer;
}

function formSettings() {
  const settings = {};
  for (const name of FIELDS) {
    const value = $(name).value;
    // An empty field is the model's default; an empty negative prompt is "none", as the CLI without the option.
    if (value === "" && name !== "prompt") continue;
    settings[name] = NUMBERS.has(name) ? Number(value) : value;
  }
  return settings;
}

function listen(column, onEvent) {
  const source = new EventSource(`/api/runs/${column.id}/events`);
  column.source = source;
  const kinds = ["queued", "running", "start", "step", "refine", "image", "progress", "edit", "done", "failed",
                 "cancelled"];
  for (const kind of kinds) {
    source.addEventListener(kind, (event) => {
      const data = JSON.parse(event.data);
      if (["done", "failed", "cancelled"].includes(kind)) source.close();
      onEvent(kind, data);
    });
  }
}

function columnEvent(column, kind, data) {
  if (kind === "queued") setStatus(`${column.label}: waiting, position ${data.position} in the queue`);
  if (kind === "running") setStatus(`${column.label}: running…`);
  if (kind === "start") {
    column.start = data;
    if (column === columns[0]) {
      $("chart").innerHTML = data.chart;
      $("command").textContent = data.command;
      drawWords(data.words, data.cut);
    }
  }
  if (kind === "step") {
    column.steps[data.index] = data;
    if (follow) shownStep = data.index;
    setStatus(`${column.label}: step ${data.index + 1} / ${column.start.steps}`);
  }
  if (kind === "refine") {  // after a tiny-decoder run: the step's x̂0 as the VAE draws it replaces the preview
    column.steps[data.index] = data;
    setStatus(`${column.label}: x̂0 decoded by the VAE, step ${data.index + 1} / ${column.start.steps}`);
  }
  if (kind === "image") column.image = data.image;
  if (kind === "failed") { showError(data.message); setStatus(`${column.label}: failed`); }
  if (kind === "cancelled") setStatus(`${column.label}: cancelled`);
  if (kind === "done") {
    column.done = true;
    setStatus(`${column.label}: done, ${column.start.steps} steps`);
    if (column === columns[0]) finished(column);
  }
  if (["done", "failed", "cancelled"].includes(kind)) $("cancel").disabled = columns.every((c) => c.done || !c.source
    || c.source.readyState === EventSource.CLOSED);
  draw();
}

function setStatus(text) { $("status").textContent = text; }

function finished(column) {
  lastFinished = column;
  $("edit-run").disabled = false;
  if (!$("edit-to").value) $("edit-to").value = column.start.settings.prompt;
  const links = [["trace.safetensors", "the trace file"], ["trace.gif", "the GIF"], ["report.html", "the HTML report"]];
  $("downloads").innerHTML = "";
  for (const [file, label] of links) {
    const link = document.createElement("a");
    link.href = `/api/runs/${column.id}/${file}`;
    link.textContent = `Download ${label}`;
    link.setAttribute("download", `diffx-${file}`);
    $("downloads").append(link);
  }
}

function drawWords(words, cut) {
  const box = $("words");
  box.innerHTML = "";
  words.forEach((text, index) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "word";
    chip.textContent = text;
    chip.setAttribute("aria-pressed", String(index === word));
    chip.addEventListener("click", () => { word = word === index ? null : index; drawWords(words, cut); draw(); });
    box.append(chip);
  });
  if (cut) box.append(Object.assign(document.createElement("span"), {className: "cut-text", textContent: ` cut: ${cut}`}));
}

function frame(src, label, caption, latent, heat) {
  const figure = document.createElement("figure");
  figure.className = "panel";
  const box = document.createElement("div");
  box.className = "frame";
  if (src) {
    const image = Object.assign(document.createElement("img"), {src, alt: label});
    if (latent) image.classList.add("pixelated");
    box.append(image);
  } else {
    box.classList.add("missing");
    box.textContent = "not recorded";
  }
  if (heat) box.append(Object.assign(document.createElement("img"), {src: heat, alt: "attention", className: "heat pixelated"}));
  figure.append(box);
  const text = document.createElement("figcaption");
  text.innerHTML = `<b></b> <span></span>`;
  text.querySelector("b").textContent = label;
  text.querySelector("span").textContent = caption;
  figure.append(text);
  return figure;
}

function draw() {
  const total = Math.max(1, ...columns.map((c) => (c.start ? c.start.steps : 1)));
  const arrived = Math.max(0, ...columns.map((c) => c.steps.length));
  $("step").max = String(total);
  $("step").value = String(shownStep + 1);
  $("step-label").textContent = `step ${shownStep + 1} / ${total} (${arrived} arrived)`;
  $("progress").style.width = `${100 * arrived / total}%`;  // a slow model's steps take seconds each
  const area = $("columns");
  area.classList.toggle("multi", columns.length > 1);
  area.innerHTML = "";
  columns.forEach((column, c) => {
    const box = document.createElement("div");
    box.className = "column";
    box.style.setProperty("--aspect", column.start ? column.start.aspect : "1");
    const title = document.createElement("h3");
    title.innerHTML = `<span class="swatch" style="background:${column.colour}"></span><span></span>`;
    title.lastChild.textContent = column.label;
    box.append(title);
    const step = column.steps[Math.min(shownStep, column.steps.length - 1)];
    const line = document.createElement("p");
    line.className = "step-info";
    line.textContent = step ? step.info : "waiting for the first step…";
    box.append(line);
    const panels = document.createElement("div");
    panels.className = "panels";
    if (step) {
      for (const key of ["xt", "x0", "eps", "guide"]) {
        const [label, caption] = info.panels[key];
        const heat = key === "x0" && word !== null && step.heat ? step.heat.word[word] : null;
        const title = key === "x0" ? step.x0_label || column.start.x0_label : label;
        panels.append(frame(step.frames[key], title, heat ? `${caption}; attention of “${column.start.words[word]}”
          on its own scale` : caption, key !== "x0" || !step.decoded, heat));
      }
    }
    if (column.image) {  // the run's result: its final latent decoded, the very pixels `diffx denoise` writes
      panels.append(frame(column.image, "result", "the final image (x_0 decoded), as diffx denoise writes it", false,
                          null));
      panels.lastChild.classList.add("result");
    }
    box.append(panels);
    area.append(box);
    for (const marker of document.querySelectorAll(`[data-marker-col="0"]`)) {
      if (c !== 0 || !step || !column.start.markers[marker.dataset.chart]) continue;
      const [x, y] = column.start.markers[marker.dataset.chart][Math.min(shownStep, column.steps.length - 1)];
      if (marker.tagName === "line") { marker.setAttribute("x1", x); marker.setAttribute("x2", x); }
      else { marker.setAttribute("cx", x); marker.setAttribute("cy", y); }
    }
  });
}

function newColumn(id, label, index) {
  return {id, label, colour: COLOURS[index % COLOURS.length], steps: [], start: null, done: false};
}

async function run(event) {
  event.preventDefault();
  showError("");
  for (const column of columns) if (column.source) column.source.close();
  const settings = formSettings();
  const compareKey = $("compare-key").value;
  const plans = [[settings, "run A"]];
  if (compareKey) {
    const raw = $("compare-value").value;
    const value = NUMBERS.has(compareKey) ? Number(raw) : raw;
    plans.push([{...settings, [compareKey]: value}, `run B: ${compareKey} = ${raw}`]);
  }
  columns = [];
  follow = true;
  shownStep = 0;
  try {
    for (const [index, [plan, label]] of plans.entries()) {
      // Each column is its own tab id on the server, so run B does not cancel run A.
      const answer = await api("/api/runs", {settings: plan, client: `${client}-${index}`});
      const column = newColumn(answer.id, label, index);
      columns.push(column);
      listen(column, (kind, data) => columnEvent(column, kind, data));
    }
    $("cancel").disabled = false;
  } catch (error) {
    showError(error.message);
  }
  draw();
}

async function strip() {
  showError("");
  const values = $("strip-values").value.split(",").map((v) => v.trim()).filter(Boolean);
  $("strip-card").hidden = false;
  const row = $("strip-row");
  row.innerHTML = "";
  for (const [index, value] of values.entries()) {
    const figure = document.createElement("figure");
    figure.innerHTML = `<div class="frame missing" style="width:160px;height:160px">queued</div><figcaption></figcaption>`;
    figure.querySelector("figcaption").textContent = `w = ${value}`;
    row.append(figure);
    try {
      const answer = await api("/api/runs", {settings: {...formSettings(), guidance: Number(value)},
                                             client: `${client}-strip-${index}`});
      listen({id: answer.id}, (kind, data) => {
        const box = figure.querySelector("div");
        if (kind === "step") box.textContent = `step ${data.index + 1}`;
        if (kind === "image") box.replaceWith(Object.assign(document.createElement("img"), {src: data.image, alt: `w = ${value}`}));
        if (kind === "failed") box.textContent = data.message;
      });
    } catch (error) {
      showError(error.message);
    }
  }
}

async function edit(event) {
  event.preventDefault();
  showError("");
  if (!lastFinished) return;
  const reweight = {};
  for (const pair of $("edit-reweight").value.split(",").map((p) => p.trim()).filter(Boolean)) {
    const [name, factor] = pair.split("=");
    reweight[name.trim()] = Number(factor);
  }
  const result = $("edit-result");
  result.innerHTML = '<div class="progress"><span></span></div>';
  try {
    const answer = await api("/api/edits", {run: lastFinished.id, to: $("edit-to").value, reweight,
                                            tau: Number($("edit-tau").value), self_tau: Number($("edit-self-tau").value)});
    listen({id: answer.id}, (kind, data) => {
      if (kind === "progress") result.querySelector(".progress span").style.width = `${100 * data.done / data.total}%`;
      if (kind === "failed") showError(data.message);
      if (kind !== "edit") return;
      result.innerHTML = "";
      for (const [name, label] of [["source", "source prompt"], ["plain", "edited prompt alone"],
                                   ["injected", `edited, attention injected (τ = ${data.tau}, τ_self = ${data.self_tau})`]]) {
        const figure = document.createElement("figure");
        figure.innerHTML = `<img alt=""><figcaption></figcaption>`;
        figure.querySelector("img").src = data.pictures[name];
        figure.querySelector("img").alt = label;
        figure.querySelector("figcaption").textContent = label;
        result.append(figure);
      }
      result.append(Object.assign(document.createElement("p"), {className: "note", textContent: `${data.title} ${data.subtitle}`}));
    });
  } catch (error) {
    showError(error.message);
  }
}

async function start() {
  info = await (await fetch("/api/info")).json();
  $("model-name").textContent = `${info.model} (${info.source})`;
  $("input-name").textContent = info.input_name;
  if (info.spacings.length === 0) $("spacing-field").style.display = "none";  // a flow grid: nothing to choose
  for (const [name, choices] of [["sampler", info.samplers], ["schedule", info.schedules], ["spacing", info.spacings]]) {
    for (const choice of choices) $(name).append(new Option(choice, choice, false, choice === info.defaults[name]));
  }
  $("steps").value = info.defaults.steps;
  $("guidance").value = info.defaults.guidance;
  $("prompt").maxLength = info.max_prompt_chars;
  $("negative_prompt").maxLength = info.max_prompt_chars;
  $("run-form").addEventListener("submit", run);
  $("edit-form").addEventListener("submit", edit);
  $("strip").addEventListener("click", strip);
  $("cancel").addEventListener("click", () => columns.forEach((c) => fetch(`/api/runs/${c.id}/cancel`, {method: "POST"})));
  $("step").addEventListener("input", () => { follow = false; shownStep = Number($("step").value) - 1; draw(); });
}

start();
