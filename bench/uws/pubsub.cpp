// A uWebSockets topic server speaking just enough of wsx's native protocol for
// bench/peers' `fanout` client, so the same client measures it beside `wsx serve`:
//
//   WebSocket /connection/websocket: {"id":N,"connect":{...}}   -> {"id":N,"connect":{"client":"uws"}}
//                                    {"id":N,"subscribe":{"channel":C}} -> ws->subscribe(C),
//                                                                        {"id":N,"subscribe":{}}
//   POST /api/publish {"channel":C,"data":D} -> app.publish(C, {"push":{"channel":C,"pub":{"offset":K,"data":D}}})
//                                               and 200 {}
//
// No JSON parser: the fields are found by their keys (the bench's messages are known).
// Built by scripts/bench from a uWebSockets checkout (UWS_DIR); run as `pubsub PORT`.
#include "App.h"

#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <unordered_map>

namespace {

// The JSON value after `"key":` in `s` (an object, a string or a scalar), or "".
std::string_view value_of(std::string_view s, std::string_view key) {
    std::string pat = "\"" + std::string(key) + "\":";
    size_t i = s.find(pat);
    if (i == std::string_view::npos) return {};
    i += pat.size();
    size_t j = i;
    if (j < s.size() && (s[j] == '{' || s[j] == '[')) {
        int depth = 0;
        bool in_str = false;
        for (; j < s.size(); j++) {
            char c = s[j];
            if (in_str) {
                if (c == '\\') j++;
                else if (c == '"') in_str = false;
            } else if (c == '"') in_str = true;
            else if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') {
                if (--depth == 0) return s.substr(i, j + 1 - i);
            }
        }
        return {};
    }
    if (j < s.size() && s[j] == '"') {
        for (j++; j < s.size(); j++) {
            if (s[j] == '\\') j++;
            else if (s[j] == '"') return s.substr(i, j + 1 - i);
        }
        return {};
    }
    while (j < s.size() && s[j] != ',' && s[j] != '}') j++;
    return s.substr(i, j - i);
}

std::string unquote(std::string_view v) {
    if (v.size() >= 2 && v.front() == '"') return std::string(v.substr(1, v.size() - 2));
    return std::string(v);
}

struct Conn {};

}  // namespace

int main(int argc, char **argv) {
    int port = argc > 1 ? std::atoi(argv[1]) : 9001;
    std::unordered_map<std::string, unsigned long> offsets;
    uWS::App app;
    app.ws<Conn>("/connection/websocket", {
        .compression = uWS::DISABLED,
        .maxPayloadLength = 64 * 1024,
        .idleTimeout = 0,
        // As `wsx serve`'s default per-connection queue: 1 MiB, then the connection goes.
        .maxBackpressure = 1024 * 1024,
        .closeOnBackpressureLimit = true,
        .message = [](auto *ws, std::string_view msg, uWS::OpCode) {
            std::string id(value_of(msg, "id"));
            if (!value_of(msg, "connect").empty()) {
                ws->send("{\"id\":" + id + ",\"connect\":{\"client\":\"uws\"}}", uWS::TEXT);
            } else if (auto sub = value_of(msg, "subscribe"); !sub.empty()) {
                ws->subscribe(unquote(value_of(sub, "channel")));
                ws->send("{\"id\":" + id + ",\"subscribe\":{}}", uWS::TEXT);
            }
        },
    }).post("/api/publish", [&app, &offsets](auto *res, auto *) {
        auto body = std::make_shared<std::string>();
        res->onAborted([]() {});
        res->onData([&app, &offsets, res, body](std::string_view chunk, bool last) {
            body->append(chunk);
            if (!last) return;
            std::string channel = unquote(value_of(*body, "channel"));
            std::string_view data = value_of(*body, "data");
            unsigned long off = ++offsets[channel];
            std::string push = "{\"push\":{\"channel\":\"" + channel + "\",\"pub\":{\"offset\":" +
                               std::to_string(off) + ",\"data\":" + std::string(data) + "}}}";
            app.publish(channel, push, uWS::TEXT, false);
            res->end("{}");
        });
    }).listen("127.0.0.1", port, [port](auto *listen_socket) {
        if (listen_socket) {
            std::cerr << "uws pubsub: open http://127.0.0.1:" << port << "/" << std::endl;
        } else {
            std::cerr << "uws pubsub: cannot listen on " << port << std::endl;
            std::exit(1);
        }
    }).run();
}
