/*
 * A console request whose answer streams: POST with `Accept: text/event-stream` and read the
 * server-sent events as they come (EventSource can only GET). "Try it" uses it to show each
 * stage of a turn and the reply as the model writes it. The stream ends with a `result` event
 * (the answer, resolved) or an `error` event (rejected, as the plain request's error would be);
 * aborting `signal` closes the connection, which cancels the work on the server.
 */
import { errorFrom, readJson } from "./console-common.js";

/**
 * postForEvents(path, {form, csrf, signal, fallback, onEvent}) -> the `result` event's data.
 * onEvent(name, data) hears every other event; fallback(status) words an error the server did
 * not explain (status 0: unreachable, or the stream broke off).
 */
export async function postForEvents(path, opts) {
  let res;
  try {
    res = await fetch(path, {
      method: "POST", credentials: "same-origin", cache: "no-store", body: opts.form, signal: opts.signal,
      headers: { Accept: "text/event-stream", "X-CSRF-Token": opts.csrf || "" }
    });
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw errorFrom(0, null, opts.fallback);
  }
  if (!res.ok || !res.body) throw errorFrom(res.status, await readJson(res), opts.fallback);

  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw errorFrom(0, null, opts.fallback);
    }
    if (chunk.done) break;
    buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = parseEvent(block);
      if (!event) continue;
      if (event.name === "result") return event.data;
      if (event.name === "error") throw errorFrom(event.data && event.data.status, event.data, opts.fallback);
      opts.onEvent(event.name, event.data);
    }
  }
  throw errorFrom(0, null, opts.fallback); // the stream ended without an answer
}

/** One event block: its `event:` name and its `data:` parsed as JSON (null for comments). */
function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length) return null;
  try {
    return { name: name, data: JSON.parse(data.join("\n")) };
  } catch (_) {
    return null;
  }
}
