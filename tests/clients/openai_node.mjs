// Asks the service one question through the official `openai` npm package, streamed, as a
// user would:
//
//     node tests/clients/openai_node.mjs http://127.0.0.1:8080/v1 "如何退货?"
//
// Prints one JSON line: the answer's text, the service's `resilient_qa` object, the
// `X-QA-Source` and `X-Request-Id` headers, `usage`, the model, the number of chunks and
// the finish reason. What the server did not send is null. Any error ends the script with
// its stack on stderr and exit status 1.
import OpenAI from "openai";

const [baseURL, question] = process.argv.slice(2);
if (!baseURL || question === undefined) {
  console.error("usage: node openai_node.mjs BASE_URL QUESTION");
  process.exit(2);
}

// The client's own retries would hide a failed answer from the service: none here.
const client = new OpenAI({ baseURL, apiKey: "any-key", maxRetries: 0, timeout: 30_000 });

try {
  const { data: stream, response } = await client.chat.completions
    .create({
      model: "resilient-qa",
      messages: [{ role: "user", content: question }],
      stream: true,
      stream_options: { include_usage: true },
    })
    .withResponse();

  const out = {
    text: "",
    resilient_qa: null,
    x_qa_source: response.headers.get("x-qa-source"),
    x_request_id: response.headers.get("x-request-id"),
    model: null,
    usage: null,
    chunks: 0,
    finish_reason: null,
  };
  for await (const chunk of stream) {
    out.chunks += 1;
    out.model = chunk.model ?? out.model;
    // Not in the SDK's types; the chunk is the parsed JSON, so it is there when sent.
    out.resilient_qa = chunk.resilient_qa ?? out.resilient_qa;
    out.usage = chunk.usage ?? out.usage;
    for (const choice of chunk.choices ?? []) {
      out.text += choice.delta?.content ?? "";
      out.finish_reason = choice.finish_reason ?? out.finish_reason;
    }
  }
  console.log(JSON.stringify(out));
} catch (err) {
  console.error(err?.stack ?? err);
  process.exit(1);
}
