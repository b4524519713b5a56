//! The demo chat page and the JavaScript client it loads, embedded in the
//! binary: `/` (`web/index.html`), `/app.js`, `/app.css`, and the client's
//! ES modules under `/js/`, taken straight from `clients/js/src` so there is
//! one copy of the client and the Rust build needs no npm.

/// `Content-Type` of the page.
const HTML: &str = "text/html; charset=utf-8";
/// `Content-Type` of the scripts (ES modules need a JavaScript type).
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
/// `Content-Type` of the style sheet.
const CSS: &str = "text/css; charset=utf-8";

/// Every file is revalidated on each load: the files change with the binary
/// and their URLs carry no version, so a cached copy could pair a new page
/// with an old client module after an upgrade. They are a few KiB each.
const CACHE_CONTROL: &str = "no-cache";

/// The page talks only to its own origin (HTTP routes and the WebSocket);
/// no inline script or style, no framing. A token in the page's URL must
/// not leak through the Referer header either.
const PAGE_HEADERS: [(&str, &str); 4] = [
    ("Cache-Control", CACHE_CONTROL),
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
];

/// Headers of the scripts and the style sheet.
const FILE_HEADERS: [(&str, &str); 2] = [
    ("Cache-Control", CACHE_CONTROL),
    ("X-Content-Type-Options", "nosniff"),
];

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The file's bytes, embedded at build time and sent as the response body.
    pub body: &'static [u8],
    /// Extra response headers (caching, content security).
    pub headers: &'static [(&'static str, &'static str)],
}

/// The demo page's own files, by path.
const PAGE_FILES: [(&str, &str, &[u8]); 3] = [
    ("/", HTML, include_bytes!("../web/index.html")),
    ("/app.js", JAVASCRIPT, include_bytes!("../web/app.js")),
    ("/app.css", CSS, include_bytes!("../web/app.css")),
];

/// The client's modules, served as `/js/<name>`. `react.js` is left out: it
/// imports `react` by bare name, which a browser resolves only through a
/// bundler or an import map the application provides.
pub const CLIENT_MODULES: [(&str, &[u8]); 7] = [
    ("client.js", include_bytes!("../clients/js/src/client.js")),
    ("emitter.js", include_bytes!("../clients/js/src/emitter.js")),
    ("index.js", include_bytes!("../clients/js/src/index.js")),
    (
        "messages.js",
        include_bytes!("../clients/js/src/messages.js"),
    ),
    ("outbox.js", include_bytes!("../clients/js/src/outbox.js")),
    (
        "reconnect.js",
        include_bytes!("../clients/js/src/reconnect.js"),
    ),
    ("typing.js", include_bytes!("../clients/js/src/typing.js")),
];

/// Where the client's modules are served.
pub const CLIENT_PREFIX: &str = "/js/";

/// The embedded file at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    if let Some(name) = path.strip_prefix(CLIENT_PREFIX) {
        return CLIENT_MODULES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, body)| Asset {
                content_type: JAVASCRIPT,
                body,
                headers: &FILE_HEADERS,
            });
    }
    PAGE_FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, content_type, body)| Asset {
            content_type,
            body,
            headers: if *content_type == HTML {
                &PAGE_HEADERS
            } else {
                &FILE_HEADERS
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(asset: Asset) -> &'static str {
        std::str::from_utf8(asset.body).expect("UTF-8")
    }

    #[test]
    fn page_files_have_their_types_and_headers() {
        let page = asset("/").expect("page");
        assert_eq!(page.content_type, HTML);
        assert!(text(page).starts_with("<!DOCTYPE html>"));
        assert!(page.headers.contains(&("Cache-Control", "no-cache")));
        assert!(page.headers.contains(&("Referrer-Policy", "no-referrer")));
        assert_eq!(asset("/app.js").unwrap().content_type, JAVASCRIPT);
        assert_eq!(asset("/app.css").unwrap().content_type, CSS);
        let module = asset("/js/client.js").expect("client module");
        assert_eq!(module.content_type, JAVASCRIPT);
        assert_eq!(module.headers, &FILE_HEADERS);
        assert!(text(module).contains("export class ChatClient"));
    }

    #[test]
    fn unknown_paths_are_not_assets() {
        for path in [
            "",
            "/index",
            "/app.js/",
            "/js/",
            "/js/react.js",
            "/js/../app.js",
            "/js/client.js/x",
            "/client.js",
        ] {
            assert!(asset(path).is_none(), "{path}");
        }
    }

    /// The relative imports of the served modules and of app.js, and the
    /// page's own references, all resolve to served files, so the page
    /// loads without a 404.
    #[test]
    fn every_reference_is_served() {
        let import = regex::Regex::new(r#"(?:from|import)\s*\(?\s*['"](\.{0,2}/[^'"]+)['"]"#)
            .expect("regex");
        let mut checked = 0;
        let mut sources: Vec<(String, &str)> = CLIENT_MODULES
            .iter()
            .map(|(name, body)| {
                (
                    format!("{CLIENT_PREFIX}{name}"),
                    std::str::from_utf8(body).expect("UTF-8"),
                )
            })
            .collect();
        sources.push(("/app.js".into(), text(asset("/app.js").unwrap())));
        for (path, source) in &sources {
            for found in import.captures_iter(source) {
                let target = &found[1];
                let resolved = if let Some(rest) = target.strip_prefix("./") {
                    format!("{}{rest}", &path[..=path.rfind('/').unwrap()])
                } else {
                    target.to_string()
                };
                assert!(
                    asset(&resolved).is_some(),
                    "{path} imports {target}, not served"
                );
                checked += 1;
            }
        }
        let page = text(asset("/").unwrap());
        let reference = regex::Regex::new(r#"(?:src|href)="(/[^"]*)""#).expect("regex");
        for found in reference.captures_iter(page) {
            assert!(
                asset(&found[1]).is_some(),
                "the page refers to {}",
                &found[1]
            );
            checked += 1;
        }
        assert!(checked >= 10, "too few references found: {checked}");
    }

    /// Every module of the client except the React hook is served: a module
    /// added to `clients/js/src` without a line here fails.
    #[test]
    fn every_client_module_is_served() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/src");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("clients/js/src")
            .map(|e| e.expect("entry").file_name().into_string().expect("name"))
            .filter(|n| n.ends_with(".js") && n != "react.js")
            .collect();
        on_disk.sort();
        let served: Vec<String> = CLIENT_MODULES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(served, on_disk);
    }
}
