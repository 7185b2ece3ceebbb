"""A paced stand-in LLM server: it streams N tokens with a fixed delay per token.

It measures the load generator itself, not a model: with 0 delay it shows the client's ceiling,
with 10 ms/token it shows how much TTFT error the client adds. It speaks OpenAI completions
streaming and Triton generate_stream. `python -m pipeline.bench.paced_server --port P --delay-ms D`.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def make_app(delay_s: float, *, fail_every: int = 0, slow_factor: float = 1.0) -> web.Application:
    counter = {"n": 0}

    async def pace(i: int) -> None:
        if delay_s:
            await asyncio.sleep(delay_s * slow_factor)
        elif i % 16 == 0:
            await asyncio.sleep(0)

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        counter["n"] += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        n = int(body.get("max_tokens", 16))
        if fail_every and counter["n"] % fail_every == 0:
            await resp.write(b'data: {"error": {"message": "planted failure"}}\n\n')
            return resp
        for i in range(n):
            await pace(i)
            await resp.write(b'data: {"choices": [{"index": 0, "text": " tok"}]}\n\n')
        usage = {"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": n + 8}}
        await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return resp

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        counter["n"] += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if fail_every and counter["n"] % fail_every == 0:
            await resp.write(b'data: {"error": "planted failure"}\n\n')
            return resp
        name = request.match_info["model"]
        for i in range(int(body.get("max_tokens", 16))):
            await pace(i)
            msg = {"model_name": name, "model_version": "1", "text_output": " tok", "output_token_count": [1]}
            await resp.write(f"data: {json.dumps(msg)}\n\n".encode())
        return resp

    async def models(request: web.Request) -> web.Response:  # what `trtbuild bench` lists without --model
        return web.json_response({"object": "list", "data": [{"id": "paced", "object": "model"}]})

    async def index(request: web.Request) -> web.Response:
        return web.json_response([{"name": "paced", "version": "1", "state": "READY"}])

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v2/repository/index", index)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v2/models/{model}/generate_stream", generate_stream)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--fail-every", type=int, default=0, help="fail every Nth request (tests)")
    ap.add_argument("--slow-factor", type=float, default=1.0, help="multiply the delay (planted slowdown)")
    args = ap.parse_args()
    app = make_app(args.delay_ms / 1000, fail_every=args.fail_every, slow_factor=args.slow_factor)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
