// The web chat: plain JS, no framework, nothing fetched from elsewhere (works offline).
// Talks to the gateway's /v1 API with the API key kept in localStorage, and reads each turn's
// server-sent events from fetch()'s ReadableStream (so it can send the Authorization header).
"use strict";
(() => {
  const KEY_STORAGE = "agent-chat.api-key";
  const MAX_RECONNECTS = 20;
  const $ = (id) => document.getElementById(id);
  const state = {
    key: localStorage.getItem(KEY_STORAGE) || "",
    conversation: null, // the open conversation's id; null: a new one, made on the first message
    cursor: "0", // the stream position after everything shown (an SSE event id)
    stream: null, // AbortController of the stream being read
    views: new Map(), // turn number -> its view
    pending: null, // the view of a sent message whose turn number is not known yet
    shownTurns: 0, // turns already shown from the history: their events are skipped
  };

  // ---- small helpers --------------------------------------------------------------------------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    node.append(...children.filter((c) => c !== null && c !== undefined));
    return node;
  }
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const uuid = () =>
    crypto.randomUUID ? crypto.randomUUID()
      : ([1e7] + -1e3 + -4e3 + -8e3 + -1e11).replace(/[018]/g, (c) =>
        (c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (c / 4)))).toString(16));
  const setStatus = (text) => { $("chat-status").textContent = text || ""; };
  const hue = (name) => [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7);

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
    const init = { method, signal, headers: { Authorization: `Bearer ${state.key}`, ...headers } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.ok) return response;
    let code = `http_${response.status}`, message = response.statusText || "request failed";
    try {
      const payload = await response.json();
      ({ code, message } = payload.error || { code, message });
    } catch { /* not JSON: keep the status line */ }
    if (response.status === 401) signOut(`Your API key was refused: ${message}`);
    throw new ApiError(response.status, code, message);
  }
  const getJson = async (path, options) => (await api(path, options)).json();

  // Server-sent events, parsed by hand: `id:`, `event:`, `data:` lines; a blank line ends one.
  async function* serverSentEvents(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "", data = [], kind = "", id = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length; // \r\n may be split
        const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
        buffer = lines.pop() + buffer.slice(cut);
        for (const line of lines) {
          if (line === "") {
            if (data.length) yield { id, event: kind || "message", data: data.join("\n") };
            data = [];
            kind = "";
            continue;
          }
          if (line.startsWith(":")) continue; // a comment (keep-alive)
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "data") data.push(text);
          else if (field === "event") kind = text;
          else if (field === "id" && !text.includes("\0")) id = text;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // ---- sign in / out --------------------------------------------------------------------------
  function showLogin(message) {
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !message;
    $("login-error").textContent = message || "";
    $("api-key").focus();
  }

  function signOut(message) {
    if (state.stream) state.stream.abort();
    localStorage.removeItem(KEY_STORAGE);
    state.key = "";
    state.conversation = null;
    $("conversation-list").replaceChildren();
    $("messages").replaceChildren();
    history.replaceState(null, "", location.pathname);
    showLogin(message);
  }

  async function signIn(key) {
    state.key = key;
    let me;
    try {
      me = await getJson("v1/me");
    } catch (err) {
      if (err.status !== 401) showLogin(`Cannot sign in: ${err.message}`);
      return;
    }
    localStorage.setItem(KEY_STORAGE, key);
    $("whoami").textContent = `Signed in as ${me.user}`;
    $("login").hidden = true;
    $("app").hidden = false;
    await loadConversations();
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted) await openConversation(wanted);
    else newConversation();
  }

  // ---- the sidebar ----------------------------------------------------------------------------
  async function loadConversations() {
    let conversations;
    try {
      ({ conversations } = await getJson("v1/conversations"));
    } catch (err) {
      setStatus(`Could not list your conversations: ${err.message}`);
      return;
    }
    $("conversation-list").replaceChildren(...conversations.map((c) => el("li", {},
      el("button", {
        type: "button", class: "conversation", "data-testid": "conversation-item",
        "data-conversation-id": c.conversation_id,
        "aria-current": c.conversation_id === state.conversation ? "page" : null,
        onclick: () => openConversation(c.conversation_id),
      },
      el("span", { class: "conversation-title", text: c.title || "Untitled conversation" }),
      el("time", { class: "muted", datetime: c.created_at, text: new Date(c.created_at).toLocaleString() })))));
  }

  function markActive() {
    for (const button of $("conversation-list").querySelectorAll("button")) {
      if (button.dataset.conversationId === state.conversation) button.setAttribute("aria-current", "page");
      else button.removeAttribute("aria-current");
    }
    history.replaceState(null, "", state.conversation ? `#${encodeURIComponent(state.conversation)}` : location.pathname);
  }

  function resetChat(conversationId, title) {
    if (state.stream) state.stream.abort();
    state.stream = null;
    state.conversation = conversationId;
    state.cursor = "0";
    state.views = new Map();
    state.pending = null;
    state.shownTurns = 0;
    $("messages").replaceChildren();
    $("chat-title").textContent = title;
    setStatus("");
    setBusy(false);
    markActive();
  }

  function newConversation() {
    resetChat(null, "New conversation");
    $("message-input").focus();
  }

  const RUNNING = ["thinking", "running_tools", "awaiting_approval"];

  async function openConversation(conversationId) {
    resetChat(conversationId, "Loading…");
    const path = `v1/conversations/${encodeURIComponent(conversationId)}`;
    let data;
    try {
      data = await getJson(path);
      // A turn that ended while the gateway read the conversation may be missing from its
      // turns: ask again (a few times at most).
      for (let again = 0; again < 3 && data.status && !RUNNING.includes(data.status.state)
        && data.status.turns > data.turns.length && state.conversation === conversationId; again++) {
        await sleep(300);
        data = await getJson(path);
      }
    } catch (err) {
      if (state.conversation !== conversationId) return;
      $("chat-title").textContent = "Conversation not available";
      failed(err.message);
      return;
    }
    if (state.conversation !== conversationId) return; // another one was opened meanwhile
    $("chat-title").textContent = data.title || "Untitled conversation";
    state.cursor = data.cursor || "0";
    data.turns.forEach(renderPastTurn);
    const status = data.status;
    // turn_running also covers a conversation too busy in a model step to tell its status.
    if (data.turn_running || (status && RUNNING.includes(status.state))) {
      // A turn is under way (sent from another tab, or before a reload): read the events kept
      // from the start, skip the turns shown already, and follow this one live from its start.
      state.cursor = "0";
      state.shownTurns = data.turns.length;
      for (const pending of (status && status.pending_approvals) || []) {
        approvalRequested(turnView(pending.turn), {
          call_id: pending.call_id, tool: pending.tool, service: pending.service,
          detail: pending.reason, args: JSON.stringify(pending.args),
        });
      }
      follow(conversationId, null, null);
    }
  }

  // ---- rendering ------------------------------------------------------------------------------
  function newView(message) {
    const node = el("article", { class: "turn", "data-testid": "turn" });
    $("messages").append(node);
    const view = { node, steps: new Map(), cards: new Map(), approvals: new Map() };
    if (message !== undefined) addMessage(view, message);
    return view;
  }

  function addMessage(view, message) {
    if (view.node.querySelector(".user")) return;
    view.node.prepend(el("div", { class: "msg user", "data-testid": "user-message", text: message }));
  }

  // The view of a live turn: a sent message's view waits (pending) for its turn number.
  function turnView(turn, message) {
    let view = state.views.get(turn);
    if (!view) {
      view = state.pending || newView();
      state.pending = null;
      view.node.dataset.turn = turn;
      state.views.set(turn, view);
    }
    if (message) addMessage(view, message);
    return view;
  }

  // An error that belongs to no turn event: shown under the latest message.
  function failed(text) {
    const view = state.pending || [...state.views.values()].pop() || newView();
    state.pending = null;
    showError(view, text);
  }

  function append(view, node) {
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    view.node.append(node);
    if (atBottom) box.scrollTop = box.scrollHeight;
    return node;
  }

  function stepText(view, step) {
    if (!view.steps.has(step)) {
      view.steps.set(step, append(view, el("div", {
        class: "msg assistant", "data-testid": "assistant-text", "data-step": step,
        "data-state": "streaming", "data-tokens": 0,
      })));
    }
    return view.steps.get(step);
  }

  function showAnswer(view, step, text) {
    const node = stepText(view, step);
    // Whether the tokens shown were the whole answer, in order (none lost across reconnects).
    if (Number(node.dataset.tokens) > 0) node.dataset.streamed = node.textContent === text ? "whole" : "partial";
    node.textContent = text || "(no answer)";
    node.dataset.state = "answer";
    node.setAttribute("aria-label", "Answer");
  }

  function showError(view, text) {
    append(view, el("div", { class: "error", role: "alert", "data-testid": "turn-error", text }));
  }

  function toolCard(view, callId, tool, service) {
    let card = view.cards.get(callId);
    if (!card) {
      const badge = el("span", {
        class: "badge", "data-testid": "tool-service", "data-service": service || "",
        title: `Served by the ${service} service`, text: service || "?",
        style: service === "local" ? null : `--hue: ${hue(service || "")}`,
      });
      card = append(view, el("div", {
        class: "card tool-card", "data-testid": "tool-card", "data-call-id": callId,
        "data-tool": tool, "data-status": "running",
      }, el("span", { class: "tool-name", "data-testid": "tool-name", text: tool }), badge,
      el("span", { class: "tool-status", "data-testid": "tool-status", text: "running…" }),
      el("pre", { class: "tool-detail", "data-testid": "tool-detail", hidden: true })));
      view.cards.set(callId, card);
    }
    return card;
  }

  function toolFinished(card, ok, detail) {
    card.dataset.status = ok ? "ok" : "failed";
    card.querySelector(".tool-status").textContent = ok ? "ok" : "failed";
    const box = card.querySelector(".tool-detail");
    box.hidden = !detail;
    box.textContent = detail || "";
  }

  function approvalRequested(view, event) {
    if (view.approvals.has(event.call_id)) return;
    const buttons = el("div", { class: "actions" });
    const outcome = el("p", { class: "outcome", "data-testid": "approval-outcome", role: "status" });
    const card = append(view, el("div", {
      class: "card approval-card", "data-testid": "approval-card", "data-call-id": event.call_id,
      "data-state": "pending",
    }, el("p", {}, el("strong", { text: `${event.tool}` }),
      el("span", { class: "badge", "data-testid": "tool-service", text: event.service, style: `--hue: ${hue(event.service || "")}` }),
      " needs approval"),
    el("p", { class: "muted", text: event.detail || "" }),
    el("pre", { class: "tool-detail", text: event.args || "" }), buttons, outcome));
    for (const verdict of ["approve", "deny"]) {
      buttons.append(el("button", {
        type: "button", class: verdict, "data-testid": `approval-${verdict}`,
        text: verdict === "approve" ? "Approve" : "Deny",
        "aria-label": `${verdict === "approve" ? "Approve" : "Deny"} ${event.tool}`,
        onclick: () => decide(card, event.call_id, verdict),
      }));
    }
    view.approvals.set(event.call_id, card);
  }

  async function decide(card, callId, verdict) {
    const conversation = state.conversation;
    card.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    try {
      const record = await getJson(`v1/conversations/${encodeURIComponent(conversation)}/approvals/${encodeURIComponent(callId)}`,
        { method: "POST", body: { verdict } });
      approvalDecided(card, { verdict: record.verdict, approver: record.approver, detail: record.reason });
    } catch (err) {
      card.querySelector(".outcome").textContent = `Could not ${verdict}: ${err.message}`;
      card.querySelectorAll("button").forEach((b) => { b.disabled = false; });
    }
  }

  function approvalDecided(card, event) {
    card.dataset.state = event.verdict;
    card.querySelector(".actions")?.remove();
    const why = event.detail ? ` (${event.detail})` : "";
    card.querySelector(".outcome").textContent = `${event.verdict === "approve" ? "Approved" : "Denied"} by ${event.approver}${why}`;
  }

  function renderPastTurn(turn) {
    const view = newView(turn.message);
    for (const [index, call] of turn.tool_calls.entries()) {
      const card = toolCard(view, `past-${index}`, call.name, call.service);
      const detail = call.ok ? "" : typeof call.result === "string" ? call.result : JSON.stringify(call.result);
      toolFinished(card, call.ok, detail);
      if (call.approval) {
        card.append(el("span", { class: "muted", text: ` · ${call.approval.verdict === "approve" ? "approved" : "denied"} by ${call.approval.approver}` }));
      }
    }
    if (turn.ok) showAnswer(view, 0, turn.answer);
    else showError(view, turn.error || "the turn failed");
    for (const note of turn.notes || []) append(view, el("p", { class: "note", text: note }));
  }

  // One stream event (a StreamEvent: id, kind, turn, step, text, event) into the page; false:
  // skipped (a turn shown from the history already).
  function handle(ev) {
    const e = ev.event || {};
    if (ev.turn && ev.turn <= state.shownTurns) return false;
    // An event the gateway made from the turn's result (no turn event behind it, turn 0) belongs
    // to the latest turn.
    const view = ev.turn ? turnView(ev.turn) : state.pending || [...state.views.values()].pop() || newView();
    switch (ev.kind) {
      case "turn_started":
        turnView(ev.turn, e.text);
        setStatus("Thinking…");
        break;
      case "model_step_started":
        setStatus("Thinking…");
        break;
      case "token": {
        const node = stepText(view, ev.step);
        node.append(ev.text || "");
        node.dataset.tokens = Number(node.dataset.tokens) + 1;
        break;
      }
      case "model_step_retry": { // the step is being redone: drop what it had said
        const node = stepText(view, ev.step);
        node.textContent = "";
        node.dataset.tokens = 0;
        break;
      }
      case "tool_started":
        if (view.steps.has(e.step)) view.steps.get(e.step).dataset.state = "thinking";
        toolCard(view, e.call_id, e.tool, e.service);
        setStatus(`Running ${e.tool}…`);
        break;
      case "tool_finished":
        toolFinished(toolCard(view, e.call_id, e.tool, e.service), e.ok, e.detail);
        break;
      case "approval_requested":
        approvalRequested(view, e);
        setStatus("Waiting for approval");
        break;
      case "approval_decided":
        if (view.approvals.has(e.call_id)) approvalDecided(view.approvals.get(e.call_id), e);
        break;
      case "compaction":
        append(view, el("p", { class: "note", "data-testid": "compaction", text: "Older turns were summarised to fit the model's context window." }));
        break;
      case "answer":
        showAnswer(view, e.step ?? [...view.steps.keys()].pop() ?? ev.step, e.text ?? ev.text);
        break;
      case "error":
        showError(view, e.text ?? ev.text ?? "the turn failed");
        break;
    }
    return true;
  }

  // ---- sending and following a turn -----------------------------------------------------------
  function setBusy(busy) {
    $("send").disabled = busy;
    $("messages").setAttribute("aria-busy", busy ? "true" : "false");
  }

  async function send(text) {
    setBusy(true);
    let conversation = state.conversation;
    if (!conversation) {
      try {
        const made = await (await api("v1/conversations", { method: "POST", body: { title: text.slice(0, 80) } })).json();
        conversation = made.conversation_id;
      } catch (err) {
        state.pending = newView(text);
        failed(`Could not start a conversation: ${err.message}`);
        setBusy(false);
        return;
      }
      state.conversation = conversation;
      $("chat-title").textContent = text.slice(0, 80);
      markActive();
      loadConversations();
    }
    state.pending = newView(text);
    await follow(conversation, text, uuid());
  }

  // Read a turn's events to its answer or error. `text` set: send it first (POST, retried with the
  // same message id, so it is answered once); then, if the stream drops, resume from the last
  // event id seen. `text` null: follow a turn already under way.
  async function follow(conversation, text, messageId) {
    const control = new AbortController();
    state.stream = control;
    setBusy(true);
    const base = `v1/conversations/${encodeURIComponent(conversation)}`;
    let sent = text === null, failures = 0, finished = false;
    while (!finished && !control.signal.aborted) {
      try {
        const response = sent
          ? await api(`${base}/events`, { headers: { Accept: "text/event-stream", "Last-Event-ID": state.cursor }, signal: control.signal })
          : await api(`${base}/messages`, {
            method: "POST", body: { text, message_id: messageId },
            headers: { Accept: "text/event-stream" }, signal: control.signal,
          });
        sent = true;
        for await (const sse of serverSentEvents(response)) {
          if (sse.id) state.cursor = sse.id;
          const ev = JSON.parse(sse.data);
          if (failures) setStatus("Reconnected");
          failures = 0;
          if (!handle(ev)) continue;
          // The turn's end: its answer or error (one without a turn event is made for this very
          // message by the gateway, from the turn's result).
          if (["answer", "error"].includes(ev.kind) && (!messageId || !ev.event || ev.event.message_id === messageId)) {
            finished = true;
            break;
          }
        }
      } catch (err) {
        if (control.signal.aborted) return;
        if (err instanceof ApiError && err.status < 500 && ![408, 429].includes(err.status)) {
          failed(err.message);
          break;
        }
      }
      if (finished || control.signal.aborted) break;
      failures += 1;
      if (failures > MAX_RECONNECTS) {
        failed("Lost the connection to the gateway: reload the page to see how the turn ended.");
        break;
      }
      setStatus("Connection lost: reconnecting…");
      await sleep(Math.min(250 * 2 ** failures, 5000));
    }
    control.abort(); // ends the live events stream once the turn is over
    if (state.stream === control) {
      state.stream = null;
      setBusy(false);
      setStatus("");
    }
  }

  // ---- wiring ---------------------------------------------------------------------------------
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    $("api-key").value = "";
    if (key) signIn(key);
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("new-conversation").addEventListener("click", newConversation);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("message-input").value.trim();
    if (!text || $("send").disabled) return;
    $("message-input").value = "";
    send(text);
  });
  $("message-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });

  if (state.key) signIn(state.key);
  else showLogin();
})();
