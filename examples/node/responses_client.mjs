// The official openai Node client's Responses API against `blackbox-sdk serve`: only the base URL changes.
//   PROXY_URL=http://127.0.0.1:8000/v1 PROXY_KEY=bb-... node examples/node/responses_client.mjs
// Prints one JSON line per step, so that scripts (and the tests) can read what happened.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.PROXY_URL ?? "http://127.0.0.1:8000/v1", apiKey: process.env.PROXY_KEY ?? "none", maxRetries: 0 });
const model = process.env.PROXY_MODEL ?? "smollm2";
const asked = { model, input: "Say hello in three words.", max_output_tokens: 8, temperature: 0 };
const show = (step, fields) => console.log(JSON.stringify({ step, ...fields }));

const { data: created, response } = await client.responses.create(asked).withResponse();
show("create", {
  text: created.output_text,
  status: created.status,
  usage: created.usage,
  call_id: response.headers.get("x-blackbox-call-id"),
  request_id: created._request_id,
  cache_hit: response.headers.get("x-blackbox-cache-hit"),
  cost_usd: response.headers.get("x-blackbox-cost-usd"),
});

const again = await client.responses.create(asked).withResponse();
show("again", { text: again.data.output_text, cache_hit: again.response.headers.get("x-blackbox-cache-hit") });

const stream = await client.responses.create({ ...asked, input: "What is 2+2?", max_output_tokens: 32, stream: true });
const kinds = [];
let deltas = "";
let last = null;
for await (const event of stream) {
  kinds.push(event.type);
  if (event.type === "response.output_text.delta") deltas += event.delta;
  last = event;
}
show("stream", { events: kinds, text: deltas, status: last?.response?.status ?? null, usage: last?.response?.usage ?? null });

const helper = client.responses.stream({ ...asked, input: "Name a fruit.", max_output_tokens: 32 });
let helped = "";
helper.on("response.output_text.delta", (event) => { helped += event.delta; });
const final = await helper.finalResponse();
// openai 4.x's finalResponse() leaves out the `output_text` convenience (OpenAI's body has none either): read the output.
const texts = final.output.flatMap((item) => (item.type === "message" ? item.content : [])).filter((part) => part.type === "output_text");
show("stream helper", { deltas: helped, output_text: final.output_text ?? texts.map((part) => part.text).join(""), status: final.status, usage: final.usage });

try {
  await client.responses.create({ model, input: "hi", max_output_tokens: 0 });
  show("bad request", { status: null });
} catch (error) {
  show("bad request", { status: error.status, type: error.error?.type ?? error.type ?? null, param: error.param ?? null });
}
