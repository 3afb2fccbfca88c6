//! The pages under `web/`, embedded in the binary.

macro_rules! files {
    ($( $path:literal => $file:literal, $kind:literal; )*) => {
        /// (path, content type, body)
        const FILES: &[(&str, &str, &str)] = &[
            $( ($path, $kind, include_str!(concat!("../../../web/", $file))), )*
        ];
    };
}

files! {
    "/" => "index.html", "text/html; charset=utf-8";
    "/index.html" => "index.html", "text/html; charset=utf-8";
    "/grading" => "grading.html", "text/html; charset=utf-8";
    "/chat" => "chat.html", "text/html; charset=utf-8";
    "/chart" => "chart.html", "text/html; charset=utf-8";
    "/console" => "console.html", "text/html; charset=utf-8";
    "/wsx.js" => "wsx.js", "text/javascript; charset=utf-8";
    "/demo.js" => "demo.js", "text/javascript; charset=utf-8";
    "/adapters.js" => "adapters.js", "text/javascript; charset=utf-8";
    "/grading.js" => "grading.js", "text/javascript; charset=utf-8";
    "/chat.js" => "chat.js", "text/javascript; charset=utf-8";
    "/chart.js" => "chart.js", "text/javascript; charset=utf-8";
    "/console.js" => "console.js", "text/javascript; charset=utf-8";
    // Served at /admin by the admin page's route (only while it is on).
    "admin.html" => "admin.html", "text/html; charset=utf-8";
    "/admin.js" => "admin.js", "text/javascript; charset=utf-8";
    "/style.css" => "style.css", "text/css; charset=utf-8";
    "/vendor/sockjs.min.js" => "vendor/sockjs.min.js", "text/javascript; charset=utf-8";
    "/vendor/sockjs-client.LICENSE" => "vendor/sockjs-client.LICENSE", "text/plain; charset=utf-8";
    "/vendor/stomp.umd.min.js" => "vendor/stomp.umd.min.js", "text/javascript; charset=utf-8";
    "/vendor/stompjs.LICENSE" => "vendor/stompjs.LICENSE", "text/plain; charset=utf-8";
    "/vendor/socket.io.min.js" => "vendor/socket.io.min.js", "text/javascript; charset=utf-8";
    "/vendor/socket.io-client.LICENSE" => "vendor/socket.io-client.LICENSE", "text/plain; charset=utf-8";
}

/// The file served at `path`, if any: content type and body.
pub fn file(path: &str) -> Option<(&'static str, &'static str)> {
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, t, b)| (*t, *b))
}
