/* GENIES per-example viewer (written by genies/results/viewer.py).

   The manifest (inline JSON) lists the shifts; each shift's data is a script file
   (data/<NNN>_<shift>.js) that sets window.GENIES_VIEWER_DATA[shift_id], loaded on demand with a
   script element: browsers block fetch() of local files. Every text from the data is inserted with
   textContent, never as HTML, because prompts and responses contain HTML and Markdown.
   The filters live in the URL fragment, so a view can be bookmarked or shared. */
(function () {
  "use strict";

  const manifest = JSON.parse(document.getElementById("genies-manifest").textContent);
  const store = (window.GENIES_VIEWER_DATA = window.GENIES_VIEWER_DATA || {});
  const FIXED = 1;
  const BROKEN = -1;
  const OUTCOMES = [
    ["all", "all examples"],
    ["incorrect", "incorrect (a pair wrong)"],
    ["correct", "correct (every pair right)"],
    ["fixed", "fixed vs zero-shot"],
    ["broken", "broken vs zero-shot"],
    ["changed", "changed vs zero-shot"],
  ];
  const PAGE_SIZES = [manifest.page_size, 100, 0]; // 0: all

  const $ = (id) => document.getElementById(id);

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key.startsWith("data-") || key === "title") node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }

  function option(value, text) {
    return el("option", { value: value, text: text });
  }

  const defaults = {
    shift: manifest.shifts.length ? manifest.shifts[0].shift_id : "",
    intervention: "",
    outcome: "all",
    judge: manifest.model,
    published: manifest.published_shown,
    size: manifest.page_size,
    page: 0,
  };
  const state = {};

  // The state is the URL fragment's values, the defaults for those it lacks.
  function readHash() {
    Object.assign(state, defaults, { published: defaults.published.slice() });
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.has("shift")) state.shift = params.get("shift");
    if (params.has("intervention")) state.intervention = params.get("intervention");
    if (params.has("outcome")) state.outcome = params.get("outcome");
    if (params.has("judge")) state.judge = params.get("judge");
    if (params.has("published"))
      state.published = params.get("published").split(",").filter((m) => m);
    if (params.has("size")) state.size = Number(params.get("size")) || 0;
    if (params.has("page")) state.page = Math.max(0, Number(params.get("page")) || 0);
  }

  function writeHash() {
    const params = new URLSearchParams({
      shift: state.shift,
      intervention: state.intervention,
      outcome: state.outcome,
      judge: state.judge,
      published: state.published.join(","),
      size: String(state.size),
      page: String(state.page),
    });
    history.replaceState(null, "", "#" + params.toString());
  }

  function setupControls() {
    $("model-name").textContent = manifest.model;
    document.title = "GENIES examples: " + manifest.model;
    for (const s of manifest.shifts) {
      const label = s.label ? " [" + s.label + "]" : "";
      $("shift").appendChild(
        option(s.shift_id, s.source + " \u2192 " + s.target + label + " (" + s.examples + ")")
      );
    }
    $("intervention").appendChild(option("", "all interventions"));
    for (const name of manifest.interventions) $("intervention").appendChild(option(name, name));
    for (const [value, text] of OUTCOMES) $("outcome").appendChild(option(value, text));
    for (const m of [manifest.model, ...manifest.published]) $("judge").appendChild(option(m, m));
    for (const n of PAGE_SIZES) $("page-size").appendChild(option(String(n), n ? String(n) : "all"));
    if (!manifest.published.length) $("published").hidden = true;
    for (const m of manifest.published) {
      const box = el("input", { type: "checkbox", value: m });
      box.addEventListener("change", () => {
        state.published = Array.from(document.querySelectorAll("#published input"))
          .filter((b) => b.checked)
          .map((b) => b.value);
        update(false);
      });
      $("published").appendChild(el("label", {}, [box, document.createTextNode(m)]));
    }
    for (const [id, key] of [
      ["shift", "shift"],
      ["intervention", "intervention"],
      ["outcome", "outcome"],
      ["judge", "judge"],
    ]) {
      $(id).addEventListener("change", () => {
        state[key] = $(id).value;
        update(true);
      });
    }
    $("page-size").addEventListener("change", () => {
      state.size = Number($("page-size").value);
      update(true);
    });
    for (const [id, step] of [
      ["prev", -1],
      ["next", 1],
      ["prev-bottom", -1],
      ["next-bottom", 1],
    ]) {
      $(id).addEventListener("click", () => {
        state.page = Math.max(0, state.page + step);
        update(false);
        if (id.endsWith("-bottom")) $("summary").scrollIntoView();
      });
    }
    window.addEventListener("hashchange", () => {
      readHash();
      writeHash();
      render();
    });
  }

  function syncControls() {
    $("shift").value = state.shift;
    $("intervention").value = state.intervention;
    $("outcome").value = state.outcome;
    $("judge").value = state.judge;
    $("page-size").value = String(state.size);
    for (const box of document.querySelectorAll("#published input"))
      box.checked = state.published.includes(box.value);
  }

  function update(resetPage) {
    if (resetPage) state.page = 0;
    writeHash();
    render();
  }

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "status error" : "status";
  }

  function loadShift(shift, done) {
    if (store[shift.shift_id]) return done(store[shift.shift_id]);
    setStatus("Loading " + shift.file + " \u2026");
    const script = document.createElement("script");
    script.src = shift.file;
    script.charset = "utf-8";
    script.onload = () => {
      if (store[shift.shift_id]) done(store[shift.shift_id]);
      else setStatus(shift.file + " did not define the data of " + shift.shift_id, true);
    };
    script.onerror = () =>
      setStatus(
        "Could not load " + shift.file + ": keep index.html and its data/ folder together.",
        true
      );
    document.head.appendChild(script);
  }

  function render() {
    syncControls();
    const shift = manifest.shifts.find((s) => s.shift_id === state.shift);
    if (!shift) {
      setStatus(
        manifest.shifts.length
          ? "Unknown shift " + state.shift + "; choose one above."
          : "No shifts: results.duckdb has no cells of " + manifest.model + ".",
        true
      );
      return;
    }
    const requested = state.shift;
    loadShift(shift, (data) => {
      if (state.shift === requested) draw(data);
    });
  }

  function pairStarts(examples) {
    const starts = [];
    let next = 0;
    for (const example of examples) {
      starts.push(next);
      next += example.dispreferred.length;
    }
    return starts;
  }

  // The results (model x intervention rows) shown for the current filters: the chosen
  // intervention (with the zero-shot baseline as reference), of the model and shown published models.
  function shownResults(data) {
    return data.results.filter(
      (r) =>
        (!r.published || state.published.includes(r.model)) &&
        (!state.intervention ||
          r.intervention === state.intervention ||
          r.intervention === manifest.baseline)
    );
  }

  function judgedResults(data) {
    return data.results.filter(
      (r) =>
        r.model === state.judge &&
        (state.intervention ? r.intervention === state.intervention : true)
    );
  }

  function matches(judged, start, count) {
    if (state.outcome === "all") return true;
    let seen = false;
    let wrong = false;
    let fixed = false;
    let broken = false;
    for (const r of judged) {
      for (let k = start; k < start + count; k++) {
        if (r.correct[k] === null) continue;
        seen = true;
        if (r.correct[k] === 0) wrong = true;
        if (r.change[k] === FIXED) fixed = true;
        if (r.change[k] === BROKEN) broken = true;
      }
    }
    switch (state.outcome) {
      case "incorrect":
        return wrong;
      case "correct":
        return seen && !wrong;
      case "fixed":
        return fixed;
      case "broken":
        return broken;
      case "changed":
        return fixed || broken;
      default:
        return true;
    }
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "n/a" : value.toFixed(digits);
  }

  function drawSummary(data, shown) {
    const s = data.shift;
    const table = el("table", { id: "summary-table" }, [
      el("caption", {
        text:
          s.source + " \u2192 " + s.target +
          (s.label ? " (" + s.label + ")" : "") +
          ", target reference " + s.target_reference +
          ": " + data.examples.length + " examples",
      }),
      el("thead", {}, [
        el(
          "tr",
          {},
          ["model", "intervention", "accuracy", "DE", "pairs", "fixed", "broken"].map((h) =>
            el("th", { text: h })
          )
        ),
      ]),
    ]);
    const body = el("tbody");
    for (const r of shown) {
      const unmatched = r.unmatched_pairs
        ? r.unmatched_pairs + " pairs of this model match no listed example"
        : "";
      body.appendChild(
        el("tr", { className: r.published ? "published" : "", title: unmatched }, [
          el("td", { text: r.model }),
          el("td", { text: r.intervention }),
          el("td", { className: "num", text: fmt(r.accuracy, 3) }),
          el("td", { className: "num", text: fmt(r.differential_elicitation, 3) }),
          el("td", { className: "num", text: String(r.pairs) }),
          el("td", { className: "num", text: String(r.fixed) }),
          el("td", { className: "num", text: String(r.broken) }),
        ])
      );
    }
    table.appendChild(body);
    $("summary").replaceChildren(table);
  }

  function drawExample(example, start, shown, judged) {
    const chips = el("span", { className: "chips" });
    for (const r of judged) {
      let fixed = 0;
      let broken = 0;
      for (let k = start; k < start + example.dispreferred.length; k++) {
        if (r.change[k] === FIXED) fixed++;
        if (r.change[k] === BROKEN) broken++;
      }
      if (fixed) chips.appendChild(el("span", { className: "chip fixed", text: r.intervention + " fixed " + fixed }));
      if (broken) chips.appendChild(el("span", { className: "chip broken", text: r.intervention + " broke " + broken }));
    }
    const responses = el("ol", { className: "responses" });
    example.responses.forEach((text, j) => {
      const preferred = j === example.preferred;
      responses.appendChild(
        el("li", { className: preferred ? "preferred" : "", "data-response": String(j) }, [
          el("span", { className: "name", text: "Response " + (j + 1) }),
          preferred ? el("span", { className: "badge", text: "preferred" }) : null,
          el("pre", { className: "text response", text: text }),
        ])
      );
    });
    const head = el("tr", {}, [el("th", { text: "model" }), el("th", { text: "intervention" })]);
    for (const d of example.dispreferred)
      head.appendChild(el("th", { text: "P(preferred) vs response " + (d + 1) }));
    const body = el("tbody");
    for (const r of shown) {
      const isReference = state.intervention && r.intervention !== state.intervention;
      const row = el(
        "tr",
        {
          className: (r.published ? "published " : "") + (isReference ? "reference" : ""),
          "data-model": r.model,
          "data-intervention": r.intervention,
        },
        [el("td", { text: r.model }), el("td", { text: r.intervention })]
      );
      example.dispreferred.forEach((d, i) => {
        const k = start + i;
        const p = r.prob[k];
        const cell = el("td", { className: "num prob", "data-pair": String(i) });
        if (p === null) {
          cell.className += " missing";
          cell.textContent = "\u2013";
        } else {
          cell.className += r.correct[k] ? " correct" : " incorrect";
          cell.setAttribute("data-prob", String(p));
          cell.appendChild(document.createTextNode(p.toFixed(3)));
          if (r.change[k] === FIXED || r.change[k] === BROKEN) {
            const word = r.change[k] === FIXED ? "\u25b2 fixed" : "\u25bc broken";
            cell.appendChild(el("span", { className: "change", text: word }));
          }
        }
        row.appendChild(cell);
      });
      body.appendChild(row);
    }
    return el("article", { className: "example", "data-example-id": example.id }, [
      el("h2", { text: example.id }, [chips]),
      el("div", { className: "label", text: "Prompt" }),
      el("pre", { className: "text prompt", text: example.prompt }),
      el("div", { className: "label", text: "Responses" }),
      responses,
      el("table", { className: "probs" }, [el("thead", {}, [head]), body]),
    ]);
  }

  function draw(data) {
    const starts = pairStarts(data.examples);
    const shown = shownResults(data);
    const judged = judgedResults(data);
    const matched = [];
    data.examples.forEach((example, i) => {
      if (matches(judged, starts[i], example.dispreferred.length)) matched.push(i);
    });
    const size = state.size > 0 ? state.size : Math.max(matched.length, 1);
    const pages = Math.max(1, Math.ceil(matched.length / size));
    state.page = Math.min(state.page, pages - 1);
    const first = state.page * size;
    const page = matched.slice(first, first + size);
    drawSummary(data, shown);
    const count = $("match-count");
    count.setAttribute("data-count", String(matched.length));
    count.textContent = matched.length
      ? "examples " + (first + 1) + "\u2013" + (first + page.length) + " of " + matched.length +
        " (of " + data.examples.length + " evaluated), page " + (state.page + 1) + "/" + pages
      : "no example matches (of " + data.examples.length + " evaluated)";
    for (const id of ["prev", "prev-bottom"]) $(id).disabled = state.page === 0;
    for (const id of ["next", "next-bottom"]) $(id).disabled = state.page >= pages - 1;
    const container = $("examples");
    container.replaceChildren(
      ...page.map((i) => drawExample(data.examples[i], starts[i], shown, judged))
    );
    setStatus("");
    // The state this rendering shows (read by the browser test to know the page is drawn).
    document.body.setAttribute("data-rendered", location.hash.slice(1));
  }

  readHash();
  setupControls();
  writeHash();
  render();
})();
