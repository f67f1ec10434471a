// Guardian dashboard: draws the state the server sends over SSE (/events); no reloads, no build step.
"use strict";
(function () {
  const COLORS = ["#0969da", "#8250df", "#bf3989", "#1a7f37", "#9a6700", "#cf222e", "#0a7ea4", "#6639ba"];
  const $ = (id) => document.getElementById(id);
  const keyInput = $("key");
  keyInput.value = localStorage.getItem("guardian-key") || "";
  keyInput.addEventListener("change", () => localStorage.setItem("guardian-key", keyInput.value.trim()));
  $("keyform").addEventListener("submit", (e) => e.preventDefault());

  function el(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") n.className = v;
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v);
    }
    for (const k of kids.flat()) if (k !== null && k !== undefined) n.append(k instanceof Node ? k : String(k));
    return n;
  }
  const fmt = (x, d = 1) => (typeof x === "number" ? x.toFixed(d) : "-");
  const mib = (x) => (typeof x === "number" ? Math.round(x).toLocaleString() + " MiB" : "-");
  const ago = (ts) => {
    if (!ts) return "never";
    const s = Math.max(0, Date.now() / 1000 - ts);
    return s < 60 ? Math.round(s) + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
  };
  const colorOf = {};
  const color = (name) => colorOf[name] || (colorOf[name] = COLORS[Object.keys(colorOf).length % COLORS.length]);

  function notice(text, bad) {
    const n = $("notice");
    n.textContent = text;
    n.className = bad ? "FAILED" : "";
    n.hidden = !text;
  }

  async function act(model, action) {
    const key = keyInput.value.trim();
    notice(`${action} ${model}…`);
    try {
      const r = await fetch(`/api/models/${encodeURIComponent(model)}/${action}`, {
        method: "POST",
        headers: key ? { Authorization: "Bearer " + key } : {},
      });
      const body = await r.json().catch(() => ({}));
      notice(r.ok ? `${action} ${model}: done` : body.error || `${action} failed (${r.status})`, !r.ok);
    } catch (e) {
      notice(`${action} ${model}: ${e}`, true);
    }
  }

  function modelCard(m, vram) {
    const place = (vram && vram.placements && vram.placements[m.name]) || null;
    const where = place
      ? (place.gpus.length ? place.gpus.map((g) => "GPU " + g).join(" + ") : "CPU") +
        ` · est ${mib(place.estimate_mib)}` + (place.measured_mib != null ? ` · measured ${mib(place.measured_mib)}` : "")
      : "-";
    const resident = ["READY", "STARTING", "STOPPING"].includes(m.state);
    return el("article", { class: "model", "data-model": m.name, "data-state": m.state },
      el("h3", {}, m.name, el("span", { class: "state " + m.state }, m.state), m.pinned ? el("span", { class: "pill" }, "pinned") : null),
      el("dl", {},
        el("dt", {}, "runs on"), el("dd", {}, where),
        el("dt", {}, "context"), el("dd", {}, m.ctx || "-"),
        el("dt", {}, "in flight"), el("dd", { class: "inflight" }, m.inflight),
        el("dt", {}, "queued"), el("dd", { class: "queued" }, m.queued || 0),
        el("dt", {}, "last load"), el("dd", {}, m.load_s != null ? fmt(m.load_s, 2) + " s" : "-"),
        el("dt", {}, "last used"), el("dd", {}, ago(m.last_used)),
        el("dt", {}, "reason"), el("dd", {}, m.reason)),
      m.last_error ? el("p", { class: "FAILED" }, m.last_error) : null,
      el("div", { class: "actions" },
        el("button", { "data-action": "load", onclick: () => act(m.name, "load"), disabled: resident ? "" : null }, "Load"),
        el("button", { "data-action": "unload", onclick: () => act(m.name, "unload") }, "Unload"),
        el("button", { "data-action": m.pinned ? "unpin" : "pin", onclick: () => act(m.name, m.pinned ? "unpin" : "pin") }, m.pinned ? "Unpin" : "Pin")),
      (m.log_tail || []).length ? el("pre", { class: "log" }, m.log_tail.join("\n")) : null);
  }

  function memory(vram) {
    if (!vram) return [];
    const out = [];
    const gpus = vram.gpus || [];
    for (const g of gpus) {
      const segs = Object.entries(g.models || {}).map(([n, v]) => [n, v, color(n)]);
      const ours = segs.reduce((a, s) => a + s[1], 0);
      segs.push(["other processes", g.other_mib, "var(--other)"]);
      const pct = (v) => (g.total_mib ? (100 * v) / g.total_mib : 0).toFixed(2) + "%";
      out.push(el("div", { class: "gpu" },
        el("strong", {}, `GPU ${g.index} · ${g.name}`), " ", `${mib(g.free_mib)} free of ${mib(g.total_mib)}`,
        el("div", { class: "bar", title: `models ${mib(ours)}` },
          segs.map(([n, v, c]) => el("span", { style: `width:${pct(v)};background:${c}`, title: `${n}: ${mib(v)}` }))),
        el("div", { class: "legend" },
          segs.map(([n, v, c]) => el("span", {}, el("i", { style: "background:" + c }), `${n} ${mib(v)}`)),
          el("span", {}, el("i", { style: "background:var(--free)" }), `free ${mib(g.free_mib)}`))));
    }
    if (!gpus.length && vram.cpu) {
      const c = vram.cpu, used = c.total_mib - c.available_mib;
      out.push(el("div", {}, `${vram.mode} mode: ${mib(c.available_mib)} RAM available of ${mib(c.total_mib)}`,
        el("div", { class: "bar" }, el("span", { style: `width:${(100 * used / (c.total_mib || 1)).toFixed(2)}%;background:var(--other)` }))));
      for (const [n, p] of Object.entries(vram.placements || {}))
        out.push(el("div", { class: "legend" }, el("span", {}, el("i", { style: "background:" + color(n) }), `${n}: est ${mib(p.estimate_mib)} RAM ${mib(p.cpu_mib)}`)));
    }
    return out;
  }

  function chart(best) {
    // Best generation speed per model, one bar each (inline SVG).
    const rows = Object.entries(best || {}).map(([m, r]) => [m, (r.gen_tps && r.gen_tps.value) || 0, r.gen_tps && r.gen_tps.settings]);
    if (!rows.length) return el("p", {}, "no records yet: guardianctl bench run");
    const max = Math.max(...rows.map((r) => r[1]), 1), h = 22, w = 320, left = 110;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${rows.length * h + 4}`);
    svg.setAttribute("width", "100%");
    svg.setAttribute("role", "img");
    rows.forEach(([m, v, s], i) => {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", 0); t.setAttribute("y", i * h + 15); t.textContent = m;
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("x", left); r.setAttribute("y", i * h + 3); r.setAttribute("height", h - 8);
      r.setAttribute("width", Math.max(1, ((w - left - 60) * v) / max)); r.setAttribute("fill", color(m)); r.setAttribute("rx", 3);
      const tt = document.createElementNS(ns, "title");
      tt.textContent = s ? `ctx ${s.ctx} batch ${s.batch_size} ubatch ${s.ubatch_size}` : "";
      r.append(tt);
      const l = document.createElementNS(ns, "text");
      l.setAttribute("x", left + Math.max(1, ((w - left - 60) * v) / max) + 4); l.setAttribute("y", i * h + 15); l.textContent = fmt(v) + " t/s";
      svg.append(t, r, l);
    });
    return svg;
  }

  function bench(b, records) {
    const out = [];
    if (b && b.run_id) {
      out.push(el("div", { id: "bench-run" }, `run ${b.run_id}: ${b.status}, ${b.done}/${b.total} cells`,
        el("progress", { max: Math.max(b.total, 1), value: b.done }),
        b.current ? el("div", { class: "legend" }, `measuring ${b.current.model} ctx ${b.current.ctx} batch ${b.current.batch_size} ubatch ${b.current.ubatch_size}`) : null));
    } else out.push(el("p", {}, "no benchmark run yet"));
    out.push(el("h3", {}, "best generation speed"), chart(records && records.best));
    return out;
  }

  function optimizer(rows) {
    if (!rows || !rows.length) return [el("p", {}, "nothing learned yet")];
    return [el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "model"), el("th", {}, "context"), el("th", {}, "launch settings"), el("th", {}, "why"))),
      el("tbody", {}, rows.map((r) => el("tr", {}, el("td", {}, r.model), el("td", {}, r.ctx != null ? r.ctx : "-"),
        el("td", {}, Object.entries(r.profile || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "-"),
        el("td", {}, r.ctx_why || r.profile_why || "-"))))))];
  }

  function recent(rows) {
    return (rows || []).map((r) => el("tr", {},
      el("td", {}, new Date(r.at * 1000).toLocaleTimeString()), el("td", {}, r.model), el("td", {}, r.route),
      el("td", { class: r.status >= 400 ? "FAILED" : "" }, r.status),
      el("td", { class: "num" }, r.ttft_s != null ? fmt(r.ttft_s * 1000, 0) + " ms" : "-"),
      el("td", { class: "num" }, `${r.prompt_tokens} → ${r.generated_tokens}`),
      el("td", { class: "num" }, fmt(r.tokens_per_s)),
      el("td", { class: "num" }, fmt(r.duration_s * 1000, 0) + " ms")));
  }

  function draw(state) {
    if (!state) return;
    $("error").hidden = !state.error;
    if (state.error) { $("error").textContent = state.error; return; }
    const st = state.status;
    $("summary").textContent = `${st.leases} in flight, ${st.queued} queued`;
    $("models").replaceChildren(...st.models.map((m) => modelCard(m, st.vram)));
    $("memory").replaceChildren(...memory(st.vram));
    $("bench").replaceChildren(...bench(state.bench, state.records));
    $("recent").tBodies[0].replaceChildren(...recent(state.recent));
    $("optimizer").replaceChildren(...optimizer(state.optimizer));
  }

  try { draw(JSON.parse($("initial").textContent)); } catch (e) { /* the stream brings it */ }
  const live = $("live");
  const source = new EventSource("/events");
  source.addEventListener("state", (e) => draw(JSON.parse(e.data)));
  source.onopen = () => { live.textContent = "live"; live.className = "pill on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "pill"; };
})();
