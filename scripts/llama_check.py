"""Set-up's check that llama.cpp, as installed, generates: a short chat answer from the packaged SmolLM2 GGUF.

A llama-cpp-python built for the wrong CPU (a native build's AMX kernels in a VM that can't run them)
dies with SIGSEGV here, at set-up, instead of in every test that starts the server. The prompt is a
chat turn of some length, as the tests send: a prompt of one or two tokens never reaches the batched
matrix multiply where such a build crashes.
"""

from llama_cpp import Llama

from blackbox_sdk.local import default_gguf_path

QUESTION = "Here are some numbers: 3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43. Which of them is the largest?"

if __name__ == "__main__":
    model = Llama(model_path=str(default_gguf_path()), n_ctx=512, n_threads=2, verbose=False)
    model.create_chat_completion(messages=[{"role": "user", "content": QUESTION}], max_tokens=4)
    print("llama.cpp generates")
