//! The pages under `web/`, embedded in the binary.

/// (path, content type, body)
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../../web/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_str!("../../../web/index.html"),
    ),
    (
        "/wsx.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/wsx.js"),
    ),
    (
        "/console.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/console.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/style.css"),
    ),
];

/// The file served at `path`, if any: content type and body.
pub fn file(path: &str) -> Option<(&'static str, &'static str)> {
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, t, b)| (*t, *b))
}
