// anyk serve through the official OpenAI Node client (npm `openai`, pinned by
// tools/openai_node_test.sh): two concurrent greedy completions at k=1 and k=4 each equal
// `anyk generate --k K` (texts given in the environment), streamed equals whole, a bad request is
// an APIError with status 400 and the server then still answers, /v1/models lists the model.
// Exits non-zero on the first failed check.
import OpenAI from "openai";

import { readFileSync } from "node:fs";

const port = process.env.ANYK_PORT;
const prompt = process.env.ANYK_PROMPT;
// anyk generate's stdout in $ANYK_WANT_DIR/wantK.txt: the prompt, the text, a newline.
const generated = (k) => {
  const out = readFileSync(`${process.env.ANYK_WANT_DIR}/want${k}.txt`, "latin1");
  return out.slice(prompt.length, out.length - 1);
};
const want = { 1: generated(1), 4: generated(4) };
const maxTokens = Number(process.env.ANYK_MAX_TOKENS);
const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "unused", maxRetries: 0 });

function check(ok, what) {
  if (!ok) {
    console.error(`FAIL: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

const models = await client.models.list();
const model = models.data[0].id;
check(models.data.length === 1 && typeof model === "string", `models.list gives one model (${model})`);

const ask = (k) => client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0, k });
const [a, b] = await Promise.all([ask(1), ask(4)]);
check(a.choices[0].text === want[1], "k=1 beside k=4 equals anyk generate --k 1");
check(b.choices[0].text === want[4], "k=4 beside k=1 equals anyk generate --k 4");
check(a.usage.k_mean === 1 && b.usage.k_mean === 4, "usage reports K 1 and 4");

const stream = await client.completions.create({ model, prompt, max_tokens: maxTokens, temperature: 0, k: 4, stream: true });
let text = "";
let finish = null;
for await (const chunk of stream) {
  text += chunk.choices[0]?.text ?? "";
  finish = chunk.choices[0]?.finish_reason ?? finish;
}
check(text === want[4] && finish === "length", "streamed equals whole (k=4)");

let status = 0;
try {
  await client.completions.create({ model, prompt, max_tokens: maxTokens, k: 99 });
} catch (e) {
  status = e.status;
  check(e instanceof OpenAI.APIError && /k/.test(e.message), `k=99 is an APIError: ${e.message}`);
}
check(status === 400, "k=99 -> 400");
const again = await ask(1);
check(again.choices[0].text === want[1], "the server still answers after the error");
