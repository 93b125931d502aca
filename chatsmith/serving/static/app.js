// The chatsmith chat page: plain JavaScript against the server's own OpenAI-compatible API.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];  // {role, content} of the finished turns of this conversation
let controller = null;  // aborts the reply being streamed
let conversation = 0;  // bumped by "New chat", so a reply stopped by it is not kept

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || resp.statusText;
  } catch (e) {
    return resp.status + " " + resp.statusText;
  }
}

// Read server-sent events from a fetch response, calling onData with each JSON payload.
async function readEvents(resp, onData) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history, { role: "user", content: text });
  addMessage("user", text);
  const box = addMessage("assistant streaming", "");
  let reply = "";
  const mine = conversation;
  controller = new AbortController();
  setBusy(true);
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: controller.signal,
      body: JSON.stringify({
        messages: messages,
        stream: true,
        temperature: parseFloat($("temperature").value),
        max_tokens: parseInt($("max-tokens").value, 10) || 200,
      }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readEvents(resp, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        box.textContent = reply;
        box.scrollIntoView({ block: "end" });
      }
    });
  } catch (err) {
    if (err.name !== "AbortError") {
      box.remove();
      addMessage("error", "Error: " + err.message);
      $("input").value = text;
      return;
    }
  } finally {
    box.classList.remove("streaming");
    controller = null;
    setBusy(false);
  }
  if (mine !== conversation) return;
  // a stopped reply is kept as it stands, so the conversation can go on from it
  history.push({ role: "user", content: text });
  if (reply.trim()) history.push({ role: "assistant", content: reply });
  box.dataset.done = "true";
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value;
  if (!text.trim() || controller) return;
  $("input").value = "";
  send(text);
});

$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => { if (controller) controller.abort(); });

$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  conversation += 1;
  history.length = 0;
  $("messages").replaceChildren();
  $("input").focus();
});

$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = $("temperature").value;
});

$("api-key").value = localStorage.getItem("chatsmith-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("chatsmith-api-key", $("api-key").value.trim());
  loadModel();
});

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (resp.ok) {
      const body = await resp.json();
      $("model-name").textContent = body.data.length ? body.data[0].id : "";
    }
  } catch (e) { /* the page still works; the name is cosmetic */ }
}
loadModel();
