"""Triton Inference Server: run it, control its models, stream from it, switch versions.

Modules (import the one you need; nothing is re-exported here, to keep imports light):
  server   locate_tritonserver(), TritonInstall, TritonServer: the process on loopback
  control  ModelControl: load/unload/readiness over HTTP, every call bounded
  client   LLMClient, Generation: generate / generate_stream (SSE) / gRPC streams
  pbtxt    render_pbtxt(), parse_pbtxt(), placeholder check, version_policy helpers
  switch   switch_version(): zero-downtime version switch with restore on failure
"""
