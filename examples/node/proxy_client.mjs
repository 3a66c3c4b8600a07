// The official openai Node client against `blackbox-sdk serve`: only the base URL changes.
//   PROXY_URL=http://127.0.0.1:8000/v1 PROXY_KEY=bb-... node examples/node/proxy_client.mjs
// Prints one JSON line per step, so that scripts (and the tests) can read what happened.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.PROXY_URL ?? "http://127.0.0.1:8000/v1", apiKey: process.env.PROXY_KEY ?? "none", maxRetries: 0 });
const model = process.env.PROXY_MODEL ?? "smollm2";
const messages = [{ role: "user", content: "Say hello in three words." }];
const show = (step, fields) => console.log(JSON.stringify({ step, ...fields }));

const { data: completion, response } = await client.chat.completions
  .create({ model, messages, max_tokens: 8, temperature: 0 })
  .withResponse();
show("create", {
  text: completion.choices[0].message.content,
  call_id: response.headers.get("x-blackbox-call-id"),
  cache_hit: response.headers.get("x-blackbox-cache-hit"),
  cost_usd: response.headers.get("x-blackbox-cost-usd"),
});

const again = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 }).withResponse();
show("again", { text: again.data.choices[0].message.content, cache_hit: again.response.headers.get("x-blackbox-cache-hit") });

const stream = await client.chat.completions.create({ model, messages, max_tokens: 8, stream: true, stream_options: { include_usage: true } });
let streamed = "";
let usage = null;
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
  usage = chunk.usage ?? usage;
}
show("stream", { text: streamed, usage });

try {
  await client.chat.completions.create({ model, messages, n: 0 });
  show("bad request", { status: null });
} catch (error) {
  show("bad request", { status: error.status, type: error.error?.type ?? error.type ?? null });
}
