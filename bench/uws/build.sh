#!/usr/bin/env bash
# Build the uWebSockets anchors of scripts/bench from a checkout of uNetworking/uWebSockets
# with uNetworking/uSockets in its uSockets/ directory (as `git clone --recursive` makes):
#   bench/uws/build.sh UWS_DIR OUT_DIR   ->  OUT_DIR/uws-echo, OUT_DIR/uws-pubsub
# uws-echo is the checkout's examples/EchoServer.cpp with the port from argv[1] (and no
# TLS files: built without SSL); uws-pubsub is bench/uws/pubsub.cpp. epoll, no SSL, -O3, LTO.
set -euo pipefail
uws=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
[ -f "$uws/src/App.h" ] && [ -f "$uws/uSockets/src/libusockets.h" ] \
  || { echo "uws: $uws is not a uWebSockets checkout with uSockets/" >&2; exit 1; }
work=$out/uws-build
rm -rf "$work" && mkdir -p "$work"
(cd "$work" && gcc -DLIBUS_NO_SSL -std=c11 -I"$uws/uSockets/src" -O3 -flto -c \
  "$uws"/uSockets/src/*.c "$uws"/uSockets/src/eventing/*.c "$uws"/uSockets/src/crypto/*.c)
sed -e 's/^int main() {/static int port; int main(int argc, char **argv) { port = std::atoi(argv[1]);/' \
  -e 's/9001/port/g' \
  "$uws/examples/EchoServer.cpp" > "$work/EchoServer.cpp"
for pair in "uws-echo:$work/EchoServer.cpp" "uws-pubsub:$here/pubsub.cpp"; do
  name=${pair%%:*} src=${pair#*:}
  g++ -std=c++20 -O3 -flto -DLIBUS_NO_SSL -I"$uws/src" -I"$uws/uSockets/src" \
    "$src" "$work"/*.o -lz -o "$out/$name"
done
echo "uws: built $out/uws-echo and $out/uws-pubsub" >&2
