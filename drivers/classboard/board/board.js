// The board page's script (drivers/classboard/page.py, docs/classboard.md "A board that is a
// web page"). It speaks the hub's API v1 as board profile classboard-v1 does: heartbeats,
// notices by long-poll with the ETag, receipts. The token comes from the URL's fragment
// (#token=...), which the browser never sends to a server; it goes out only as the Bearer
// header of our own API calls. Notices are text: they are put in the page with textContent,
// never parsed as markup (no HTML-parsing sink here; the CSP forbids inline script anyway).
"use strict";

(() => {
  const API = "/api/v1";
  const VERSION = "web-1";
  const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
  const started = Date.now();
  const el = (id) => document.getElementById(id);
  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  let offset = 0; // the gateway's clock minus ours, ms (boards without NTP)
  let interval = 30; // s between heartbeats, as the hub says
  const receipted = new Set(); // "id@rev/status" sent (or being sent)
  const dismissed = new Set(); // "id@rev" of emergencies dismissed on this board
  let emergencies = []; // the emergency notices now valid, in the hub's order
  let shownEmergency = null;
  let problem = "";

  function say(text, bad) {
    const s = el("status");
    s.textContent = text;
    s.classList.toggle("bad", Boolean(bad));
  }

  function trouble(text) {
    problem = text;
    say(text, true);
  }

  function fine() {
    if (problem) {
      problem = "";
      say("", false);
    }
  }

  async function call(method, path, body, headers) {
    const h = Object.assign({ Authorization: "Bearer " + token }, headers || {});
    const init = { method, headers: h, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      h["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(API + path, init);
  }

  function refused(r, what) {
    if (r.status === 401) trouble("the hub refused this board's token (" + what + ")");
    else trouble(what + ": HTTP " + r.status);
    return r.status === 401 || r.status === 429 ? 10000 : 2000;
  }

  // ---- who we are, the clock --------------------------------------------------------

  async function whoami() {
    for (;;) {
      try {
        const r = await call("GET", "/board");
        if (r.ok) {
          const doc = await r.json();
          el("class").textContent = doc.class_name || doc.id;
          el("where").textContent = [doc.building, doc.room].filter((x) => x).join(" · ");
          interval = doc.heartbeat_interval || interval;
          fine();
          return;
        }
        await pause(refused(r, "board"));
      } catch (e) {
        trouble("the hub is unreachable");
        await pause(2000);
      }
    }
  }

  function tick() {
    const now = new Date(Date.now() + offset);
    el("clock").textContent = now.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    el("date").textContent = now.toLocaleDateString([], { weekday: "long", month: "long", day: "numeric" });
  }

  // ---- heartbeats -------------------------------------------------------------------

  async function heartbeat() {
    const doc = {
      app_version: VERSION,
      screen: document.visibilityState === "visible" ? "on" : "off",
      uptime: Math.round((Date.now() - started) / 1000),
    };
    try {
      const sent = Date.now();
      const r = await call("POST", "/heartbeat", doc);
      if (!r.ok) return refused(r, "heartbeat");
      const reply = await r.json();
      offset = reply.epoch_ms - Math.round((sent + Date.now()) / 2);
      interval = reply.interval || interval;
      fine();
      tick();
    } catch (e) {
      trouble("the hub is unreachable");
    }
    return interval * 1000;
  }

  async function heartbeats() {
    for (;;) await pause(await heartbeat());
  }

  // ---- receipts ---------------------------------------------------------------------

  async function receipt(n, status, reason) {
    const key = n.id + "@" + n.rev + "/" + status;
    if (receipted.has(key)) return;
    receipted.add(key);
    const doc = { id: n.id, rev: n.rev, status };
    if (reason) doc.reason = reason.replace(/[<>\u0000-\u001f]/g, " ").slice(0, 200);
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const r = await call("POST", "/notices/receipts", doc);
        if (r.ok || r.status === 404 || r.status === 409) return; // gone or replaced: moot
        await pause(refused(r, "receipt"));
      } catch (e) {
        await pause(2000);
      }
    }
    receipted.delete(key); // not delivered: sent again at the next list
  }

  // Once the browser has painted what was put in the page (a hidden page paints nothing).
  function painted(fn) {
    requestAnimationFrame(() => setTimeout(fn, 0));
  }

  // ---- notices ----------------------------------------------------------------------

  function item(n) {
    const li = document.createElement("li");
    li.className = "notice " + n.level;
    li.dataset.id = n.id;
    const title = document.createElement("h2");
    title.className = "notice-title";
    title.textContent = n.title;
    const body = document.createElement("p");
    body.className = "notice-body";
    body.textContent = n.body;
    li.append(title, body);
    return li;
  }

  function showEmergency() {
    const box = el("emergency");
    const n = emergencies.find((x) => !dismissed.has(x.id + "@" + x.rev)) || null;
    shownEmergency = n;
    if (n === null) {
      box.hidden = true;
      return;
    }
    el("emergency-title").textContent = n.title;
    el("emergency-body").textContent = n.body;
    box.dataset.id = n.id;
    box.hidden = false;
  }

  function render(notices) {
    const list = el("notices");
    const shown = [];
    const items = [];
    for (const n of notices) {
      try {
        items.push(item(n));
        shown.push(n);
      } catch (e) {
        receipt(n, "failed", "the page could not show it: " + e.name);
      }
    }
    list.replaceChildren(...items);
    el("empty").hidden = items.length > 0;
    emergencies = shown.filter((n) => n.level === "emergency");
    showEmergency();
    painted(() => {
      for (const n of shown) receipt(n, "displayed");
    });
  }

  async function notices() {
    let etag = null;
    for (;;) {
      let r;
      try {
        r = await call("GET", "/notices", undefined, etag ? { "If-None-Match": etag } : {});
      } catch (e) {
        trouble("the hub is unreachable");
        await pause(2000);
        continue;
      }
      if (r.status === 304) continue;
      if (!r.ok) {
        await pause(refused(r, "notices"));
        continue;
      }
      const doc = await r.json();
      etag = r.headers.get("ETag");
      fine();
      render(doc.notices);
    }
  }

  function dismiss() {
    const n = shownEmergency;
    if (n === null) return;
    dismissed.add(n.id + "@" + n.rev);
    receipt(n, "dismissed");
    showEmergency();
  }

  // ---- start ------------------------------------------------------------------------

  el("version").textContent = VERSION;
  el("dismiss").addEventListener("click", dismiss);
  tick();
  setInterval(tick, 1000);
  if (!token) {
    trouble("no token: open this page as /board/#token=<the board's token>");
    return;
  }
  document.addEventListener("visibilitychange", () => heartbeat());
  whoami().then(() => {
    heartbeats();
    notices();
  });
})();
