// The status page's script (agent/status_page.py, docs/status-page.md). It fetches
// /api/status every `refresh` seconds (the gateway says how often) and re-renders; when a
// fetch fails the last data stays, marked stale. Read-only: no other request is made. Every
// text from the gateway goes in with textContent, never parsed as markup. Labels in English
// and Chinese: ?lang=en|zh, else the choice saved by the toggle, else the browser's language.
"use strict";

(() => {
  const LABELS = {
    en: {
      title: "Campus gateway", gateway: "Gateway", school: "School", gateway_id: "Gateway",
      version: "Version", uptime: "Up for", broker: "District broker", connected: "connected",
      disconnected: "DISCONNECTED", since: "since", outbox: "Events waiting",
      backlog: "Not yet sent", oldest: "Oldest waiting", store: "Store", alarms: "Active alarms",
      no_alarms: "None", devices: "Devices", online: "online", offline: "OFFLINE",
      unknown: "not yet seen", errors: "Recent warnings and errors", no_errors: "None",
      values_at: "values at", no_values: "no values yet", stale: "NOT UP TO DATE",
      stale_since: "last update", updated: "updated", every: "refreshes every",
      unauthorized: "the gateway wants its token: open this page as /?token=…",
      events: "events", of: "of", ago: "ago", none: "—", lang: "中文", reason: "reason",
      severity: "severity", zone: "zone",
    },
    zh: {
      title: "校园网关", gateway: "网关", school: "学校", gateway_id: "网关编号", version: "版本",
      uptime: "已运行", broker: "区平台服务器", connected: "已连接", disconnected: "未连接",
      since: "自", outbox: "待发送事件", backlog: "尚未发送", oldest: "最早待发",
      store: "存储", alarms: "当前报警", no_alarms: "无", devices: "设备", online: "在线",
      offline: "离线", unknown: "尚未连接", errors: "最近的警告和错误", no_errors: "无",
      values_at: "读数时间", no_values: "暂无读数", stale: "数据未更新",
      stale_since: "上次更新", updated: "更新于", every: "刷新间隔",
      unauthorized: "需要访问令牌：请用 /?token=… 打开本页",
      events: "条", of: "/", ago: "前", none: "—", lang: "English", reason: "原因",
      severity: "级别", zone: "防区",
    },
  };
  const KEY = "campus-status-lang";
  const el = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);

  function pickLang() {
    const asked = params.get("lang");
    if (asked === "en" || asked === "zh") return asked;
    let saved = null;
    try {
      saved = localStorage.getItem(KEY);
    } catch (e) {
      saved = null; // storage off (private mode): the browser's language decides
    }
    if (saved === "en" || saved === "zh") return saved;
    const langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || ""];
    return String(langs[0] || "").toLowerCase().startsWith("zh") ? "zh" : "en";
  }

  let lang = pickLang();
  let doc = null; // the last status the gateway sent
  let lastOk = 0; // Date.now() of that fetch
  let problem = "";
  let refresh = 5;
  const t = (key) => LABELS[lang][key] || LABELS.en[key] || key;

  function node(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined && text !== null) n.textContent = String(text);
    return n;
  }

  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return t("none");
    s = Math.max(0, s);
    const zh = lang === "zh";
    if (s < 120) return Math.round(s) + (zh ? " 秒" : " s");
    if (s < 7200) return Math.round(s / 60) + (zh ? " 分钟" : " min");
    if (s < 172800) return (s / 3600).toFixed(1) + (zh ? " 小时" : " h");
    return (s / 86400).toFixed(1) + (zh ? " 天" : " d");
  }

  function ago(ts) {
    if (!doc || ts === null || ts === undefined) return t("none");
    return lang === "zh" ? duration(doc.now - ts) + t("ago") : duration(doc.now - ts) + " " + t("ago");
  }

  function clock(ts) {
    if (ts === null || ts === undefined) return t("none");
    return new Date(ts * 1000).toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB");
  }

  function bytes(n) {
    // Binary units, as [store] max_size is written ("512MiB").
    if (!isFinite(n)) return t("none");
    if (n < 1048576) return (n / 1024).toFixed(0) + " KiB";
    if (n < 1073741824) return (n / 1048576).toFixed(n < 10485760 ? 1 : 0) + " MiB";
    return (n / 1073741824).toFixed(2) + " GiB";
  }

  function value(v) {
    if (v === null || v === undefined) return t("none");
    if (typeof v === "number" && !Number.isInteger(v)) return String(Math.round(v * 1000) / 1000);
    return String(v);
  }

  function labels() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.title = t("title");
    for (const n of document.querySelectorAll("[data-i18n]")) n.textContent = t(n.dataset.i18n);
    el("lang").textContent = t("lang");
  }

  function renderDevice(d) {
    const li = node("li", "device");
    li.dataset.device = d.id;
    li.dataset.online = d.online === true ? "true" : d.online === false ? "false" : "unknown";
    const head = node("div", "device-head");
    head.append(node("span", "device-id", d.id));
    const state = d.online === true ? "online" : d.online === false ? "offline" : "unknown";
    head.append(node("span", "badge state " + (d.online === true ? "ok" : d.online === false ? "bad" : ""), t(state)));
    li.append(head);
    const where = Object.values(d.location || {}).join(" · ");
    li.append(node("div", "muted small", [d.category, where].filter(Boolean).join(" · ")));
    li.append(node("div", "muted small since", t("since") + " " + clock(d.since) + " (" + ago(d.since) + ")"));
    if (d.online === false && d.reason) li.append(node("div", "error small reason", t("reason") + ": " + d.reason));
    const rows = d.values || [];
    const stateRows = Object.entries(d.state || {});
    if (rows.length || stateRows.length) {
      const table = node("table", "values");
      for (const r of rows) {
        const tr = node("tr");
        tr.dataset.point = r.point;
        tr.append(node("td", "p", r.point), node("td", "v", value(r.value) + (r.unit ? " " + r.unit : "")));
        table.append(tr);
      }
      for (const [k, v] of stateRows) {
        const tr = node("tr");
        tr.dataset.point = k;
        tr.append(node("td", "p", k), node("td", "v", value(v)));
        table.append(tr);
      }
      li.append(table);
    }
    li.append(node("div", "muted small", d.values_ts ? t("values_at") + " " + clock(d.values_ts) + (d.quality && d.quality !== "good" ? " · " + d.quality : "") : t("no_values")));
    return li;
  }

  function render() {
    labels();
    const stale = Boolean(problem);
    document.body.classList.toggle("stale-data", stale);
    el("stale").hidden = !stale;
    if (stale) {
      const when = lastOk ? " · " + t("stale_since") + " " + new Date(lastOk).toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB") : "";
      el("stale").textContent = t("stale") + " (" + problem + ")" + when;
    }
    if (!doc) return;
    const g = doc.gateway;
    el("who").textContent = g.school + " · " + g.gateway;
    el("school").textContent = g.school;
    el("gateway").textContent = g.gateway + (g.host ? " (" + g.host + ")" : "");
    el("version").textContent = g.version;
    el("uptime").textContent = duration(g.uptime);
    el("updated").textContent = t("updated") + " " + clock(doc.now) + " · " + t("every") + " " + duration(doc.refresh);

    const b = doc.broker;
    const bs = el("broker-state");
    bs.textContent = b.connected ? t("connected") : t("disconnected");
    bs.className = "badge " + (b.connected ? "ok" : "bad");
    el("broker-since").textContent = b.since ? t("since") + " " + clock(b.since) + " (" + ago(b.since) + ")" : "";
    el("broker-url").textContent = b.url;
    el("broker-error").hidden = !b.last_error;
    el("broker-error").textContent = b.last_error || "";

    el("backlog").textContent = doc.backlog + " " + t("events");
    el("oldest").textContent = doc.oldest_unsent_age === null ? t("none") : duration(doc.oldest_unsent_age);
    const s = doc.store;
    const share = s.max_size ? s.used_bytes / s.max_size : 0;
    el("store-use").textContent = bytes(s.used_bytes) + " " + t("of") + " " + bytes(s.max_size) + " (" + Math.round(share * 100) + " %)";
    el("store-bar").style.width = Math.min(100, share * 100).toFixed(1) + "%";
    el("store-bar").classList.toggle("high", share > 0.8);

    const alarms = el("alarms");
    alarms.replaceChildren(...doc.alarms.map((a) => {
      const li = node("li", "alarm");
      li.dataset.device = a.device;
      const extra = [a.severity ? t("severity") + " " + a.severity : "", a.zone ? t("zone") + " " + a.zone : ""].filter(Boolean).join(" · ");
      li.textContent = a.device + " · " + a.alarm + (extra ? " · " + extra : "") + " · " + t("since") + " " + clock(a.since);
      return li;
    }));
    el("no-alarms").hidden = doc.alarms.length > 0;

    el("devices").replaceChildren(...doc.devices.map(renderDevice));

    el("errors").replaceChildren(...doc.errors.map((e) => {
      const li = node("li");
      li.append(node("span", "level-" + e.level, e.level), document.createTextNode(" " + clock(e.ts) + " " + e.message));
      return li;
    }));
    el("no-errors").hidden = doc.errors.length > 0;
  }

  async function poll() {
    try {
      const r = await fetch("/api/status", { cache: "no-store", credentials: "same-origin" });
      if (r.status === 401) throw new Error(t("unauthorized"));
      if (!r.ok) throw new Error("HTTP " + r.status);
      doc = await r.json();
      refresh = Math.max(1, Number(doc.refresh) || 5);
      lastOk = Date.now();
      problem = "";
    } catch (e) {
      problem = e && e.message ? e.message : String(e);
    }
    render();
    setTimeout(poll, refresh * 1000);
  }

  el("lang").addEventListener("click", () => {
    lang = lang === "zh" ? "en" : "zh";
    try {
      localStorage.setItem(KEY, lang);
    } catch (e) {
      // storage off: the choice lasts until the page is left
    }
    params.set("lang", lang);
    history.replaceState(null, "", location.pathname + "?" + params.toString());
    render();
  });

  labels();
  poll();
})();
