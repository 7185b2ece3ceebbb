"""Triton Inference Server: run it, control its models, stream from it.

Modules (import the one you need; nothing is re-exported here, to keep imports light):
  install  locate_tritonserver(), TritonInstall: the binary and what its python backend needs
  server   TritonServer: the process on loopback (start, stop, shm cleanup)
  control  ModelControl: load/unload/readiness over HTTP, every call bounded
  client   LLMClient, Generation: generate / generate_stream (SSE) / gRPC streams
  stubs    kill_stubs(): end python-backend stubs of a hung load

The model repository (rendering, publish, switch, rollback) is pipeline/repository/.
"""
