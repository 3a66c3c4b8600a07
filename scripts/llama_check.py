"""Set-up's check that llama.cpp, as installed, generates: one token from the packaged SmolLM2 GGUF.

A llama-cpp-python built for the wrong CPU (a native build's AMX kernels in a VM that can't run them)
dies with SIGSEGV here, at set-up, instead of in every test that starts the server.
"""

from llama_cpp import Llama

from blackbox_sdk.local import default_gguf_path

if __name__ == "__main__":
    model = Llama(model_path=str(default_gguf_path()), n_ctx=256, n_threads=2, verbose=False)
    model.create_completion("Hello", max_tokens=1)
    print("llama.cpp generates")
