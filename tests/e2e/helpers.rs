//! End-to-end helpers: pages served on loopback, applications on port 0 (embedded or
//! split into API and worker instances on PostgreSQL + Redis + S3).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use operator::{Application, Roles};
use operator_config::Settings;
use operator_domain::auth::Role;
use operator_testkit::{
    ApiClient, RedisPrefix, TestDatabase, distributed_settings, embedded_settings, issue_key_with,
};
use poem::http::StatusCode;
use poem::web::Form;
use poem::web::{Html, Path, Query};
use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route, Server, get, handler, post,
};
use tokio_util::sync::CancellationToken;

/// Serves `app` on a free loopback port until the token is cancelled; returns the base
/// URL (`http://127.0.0.1:PORT`) and the token.
pub async fn serve_on_loopback(app: impl Endpoint + 'static) -> (String, CancellationToken) {
    let acceptor =
        poem::listener::Listener::into_acceptor(poem::listener::TcpListener::bind("127.0.0.1:0"))
            .await
            .expect("bind a loopback port");
    let port = poem::listener::Acceptor::local_addr(&acceptor)
        .into_iter()
        .find_map(|address| address.as_socket_addr().map(|socket| socket.port()))
        .expect("port");
    let stop = CancellationToken::new();
    let stopped = stop.clone().cancelled_owned();
    tokio::spawn(
        Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(app, stopped, None),
    );
    (format!("http://127.0.0.1:{port}"), stop)
}

/// A tiny site on loopback that counts requests per path.
pub struct PageServer {
    pub base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: CancellationToken,
}

/// The background colour of the pages, checked in screenshots.
pub const PAGE_RGB: [u8; 3] = [0x33, 0x66, 0xcc];

#[handler]
fn page(Path(name): Path<String>) -> Html<String> {
    let height = if name.starts_with("tall") { 4000 } else { 200 };
    Html(format!(
        "<!doctype html><html><head><title>page {name}</title>\
         <style>html,body{{margin:0;background:#3366cc}}</style></head>\
         <body><h1 id=\"title\">Page {name}</h1><div style=\"height:{height}px\"></div></body></html>"
    ))
}

#[derive(serde::Deserialize)]
struct Target {
    to: String,
}

/// `/redirect?to=URL`: a 302 to anywhere.
#[handler]
fn redirect(Query(target): Query<Target>) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header("location", target.to)
        .finish()
}

/// `/embed?to=URL`: a page showing an image from anywhere.
#[handler]
fn embed(Query(target): Query<Target>) -> impl IntoResponse {
    let source = target.to.replace('"', "&quot;");
    Html(format!(
        "<!doctype html><html><head><title>embed</title></head>\
         <body><img id=\"picture\" src=\"{source}\" width=\"10\" height=\"10\"></body></html>"
    ))
}

/// `/popup?to=URL`: opens a new window at URL as it loads.
#[handler]
fn popup(Query(target): Query<Target>) -> impl IntoResponse {
    let target = serde_json::to_string(&target.to).unwrap_or_default();
    Html(format!(
        "<!doctype html><html><head><title>popup</title></head>\
         <body><script>window.open({target}, '_blank');</script></body></html>"
    ))
}

/// `/opener?to=URL`: a button whose click opens a new window at URL (a user gesture,
/// which the popup blocker lets through).
#[handler]
fn opener(Query(target): Query<Target>) -> impl IntoResponse {
    let target = serde_json::to_string(&target.to).unwrap_or_default();
    Html(format!(
        "<!doctype html><html><head><title>opener</title></head><body>\
         <button id=\"open\" style=\"width:200px;height:60px\" \
         onclick='window.open({target}, \"_blank\")'>open</button></body></html>"
    ))
}

/// `/websocket?to=ws://…`: opens a WebSocket as it loads; `#done` appears once the
/// socket opened or failed.
#[handler]
fn websocket(Query(target): Query<Target>) -> impl IntoResponse {
    let target = serde_json::to_string(&target.to).unwrap_or_default();
    Html(format!(
        "<!doctype html><html><head><title>websocket</title></head><body><script>\
         const done = (outcome) => {{ if (document.getElementById('done')) return; \
           const mark = document.createElement('p'); mark.id = 'done'; mark.textContent = outcome; \
           document.body.appendChild(mark); }};\
         const socket = new WebSocket({target});\
         socket.onopen = () => done('open'); socket.onerror = () => done('error'); \
         socket.onclose = () => done('closed');\
         </script></body></html>"
    ))
}

/// `/service-worker?to=URL`: registers `/sw.js?to=URL`, whose install handler fetches
/// URL; `#done` appears once the worker is active (or its registration failed).
#[handler]
fn service_worker_page(Query(target): Query<Target>) -> impl IntoResponse {
    let script =
        serde_json::to_string(&format!("/sw.js?to={}", url_escape(&target.to))).unwrap_or_default();
    Html(format!(
        "<!doctype html><html><head><title>service worker</title></head><body><script>\
         const done = (outcome) => {{ const mark = document.createElement('p'); mark.id = 'done'; \
           mark.textContent = outcome; document.body.appendChild(mark); }};\
         navigator.serviceWorker.register({script})\
           .then(() => navigator.serviceWorker.ready).then(() => done('active'))\
           .catch((error) => done('failed: ' + error));\
         </script></body></html>"
    ))
}

/// `/sw.js?to=URL`: a service worker that fetches URL when it installs.
#[handler]
fn service_worker_script() -> Response {
    Response::builder()
        .content_type("application/javascript")
        .body(
            "self.addEventListener('install', (event) => {\
               const to = new URL(self.location.href).searchParams.get('to');\
               event.waitUntil(fetch(to, { mode: 'no-cors', cache: 'no-store' }).catch(() => null));\
               self.skipWaiting();\
             });\
             self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));",
        )
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// `/login`: a form that posts to `/welcome`.
#[handler]
fn login_form() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>login</title></head><body>\
         <form method=\"post\" action=\"/welcome\">\
         <input id=\"user\" name=\"user\"><input id=\"password\" name=\"password\" type=\"password\">\
         <select id=\"plan\" name=\"plan\"><option value=\"free\">Free</option><option value=\"pro\">Pro</option></select>\
         <button id=\"submit\" type=\"submit\">Sign in</button></form></body></html>",
    )
}

#[derive(serde::Deserialize)]
struct Login {
    user: String,
    password: String,
    plan: String,
}

/// `/welcome`: greets a user whose password is `secret`.
#[handler]
fn welcome(Form(login): Form<Login>) -> Html<String> {
    let greeting = if login.password == "secret" {
        format!("Welcome, {} ({})", login.user, login.plan)
    } else {
        "Wrong password".to_owned()
    };
    Html(format!(
        "<!doctype html><html><head><title>welcome</title></head><body><h1 id=\"greeting\">{greeting}</h1></body></html>"
    ))
}

/// `/list`: a product list to scrape.
#[handler]
fn list() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>list</title></head><body><ul id=\"products\">\
         <li class=\"item\"><a class=\"name\" href=\"/p/1\">Apple</a><span class=\"price\">1.20</span></li>\
         <li class=\"item\"><a class=\"name\" href=\"/p/2\">Banana</a><span class=\"price\">0.50</span></li>\
         <li class=\"item\"><a class=\"name\" href=\"/p/3\">Cherry</a><span class=\"price\">3.00</span></li>\
         </ul><script>document.getElementById('products').insertAdjacentHTML('beforeend', \
         '<li class=\"item\"><a class=\"name\" href=\"/p/4\">Date</a><span class=\"price\">2.25</span></li>');</script></body></html>",
    )
}

/// `/card`: one 240×120 element below the fold.
#[handler]
fn card() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>card</title><style>body{margin:0}</style></head><body>\
         <div style=\"height:1500px\"></div>\
         <div id=\"card\" style=\"width:240px;height:120px;background:#3366cc\"></div></body></html>",
    )
}

/// `/interactive`: an element that records being hovered, two focusable elements, a
/// field that records the last key pressed in it, and room to scroll.
#[handler]
fn interactive() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>interactive</title><style>body{margin:0}</style></head><body>\
         <button id=\"first\">first</button><input id=\"field\">\
         <div id=\"target\" style=\"width:200px;height:100px;background:#3366cc\" \
         onmouseenter=\"document.body.dataset.hovered = 'yes'\"></div>\
         <div style=\"height:3000px\"></div>\
         <script>document.getElementById('field').addEventListener('keydown', \
         (event) => { document.body.dataset.lastKey = event.key; });</script></body></html>",
    )
}

/// `/ticking`: asks for `/tick` every 50 ms for as long as it is open.
#[handler]
fn ticking() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>ticking</title></head><body>\
         <script>setInterval(() => fetch('/tick').catch(() => {}), 50);</script></body></html>",
    )
}

/// `/hang`: never answers (within any test's patience).
#[handler]
async fn hang() -> &'static str {
    tokio::time::sleep(std::time::Duration::from_secs(300)).await;
    "late"
}

/// `/never-loads`: its image never arrives, so `load` never fires.
#[handler]
fn never_loads() -> Html<&'static str> {
    Html(
        "<!doctype html><html><head><title>never</title></head><body><img src=\"/hang\"></body></html>",
    )
}

/// `/cookies`: shows the request's cookies.
#[handler]
fn cookies(request: &Request) -> Html<String> {
    let cookies = request
        .headers()
        .get("cookie")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .replace('<', "&lt;");
    Html(format!(
        "<!doctype html><html><head><title>cookies</title></head><body><p id=\"cookies\">{cookies}</p></body></html>"
    ))
}

impl PageServer {
    pub async fn start() -> Self {
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counter = Arc::clone(&hits);
        let app = Route::new()
            .at("/redirect", get(redirect))
            .at("/embed", get(embed))
            .at("/popup", get(popup))
            .at("/opener", get(opener))
            .at("/websocket", get(websocket))
            .at("/service-worker", get(service_worker_page))
            .at("/sw.js", get(service_worker_script))
            .at("/login", get(login_form))
            .at("/welcome", post(welcome))
            .at("/list", get(list))
            .at("/card", get(card))
            .at("/ticking", get(ticking))
            .at("/interactive", get(interactive))
            .at("/hang", get(hang))
            .at("/never-loads", get(never_loads))
            .at("/cookies", get(cookies))
            .at("/:name", get(page))
            .around(move |endpoint, request| {
                let counter = Arc::clone(&counter);
                async move {
                    let path = request.uri().path().to_owned();
                    *counter.lock().expect("lock").entry(path).or_default() += 1;
                    endpoint.call(request).await
                }
            });
        let (base, stop) = serve_on_loopback(app).await;
        Self { base, hits, stop }
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// The same page, addressed by the name `localhost` instead of the address.
    pub fn localhost_url(&self, name: &str) -> String {
        self.url(name).replace("127.0.0.1", "localhost")
    }

    /// The page `name` (one of the `?to=URL` pages above), by the name `localhost`,
    /// pointed at `target`.
    pub fn localhost_url_to(&self, name: &str, target: &str) -> String {
        format!("{}?to={target}", self.localhost_url(name))
    }

    pub fn hits(&self, name: &str) -> usize {
        self.hits
            .lock()
            .expect("lock")
            .get(&format!("/{name}"))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A TCP server on loopback that counts the connections it accepts and closes them: what
/// reaches it, whatever the protocol (a WebSocket handshake, a plain request).
pub struct ConnectionCounter {
    pub port: u16,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
}

impl ConnectionCounter {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("address").port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => {
                        if accepted.is_ok() {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
            }
        });
        Self {
            port,
            accepted,
            stop,
        }
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for ConnectionCounter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Running application instances and a client for their API.
pub struct TestApp {
    api: ApiClient,
    stop: CancellationToken,
    running: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _database: Option<TestDatabase>,
    _redis: Option<RedisPrefix>,
    _directory: tempfile::TempDir,
}

/// A started instance: its API address and owner key (when it serves the API).
struct Started {
    url: Option<String>,
    key: Option<String>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(settings: Settings, roles: Roles, stop: &CancellationToken) -> Started {
    let application = Application::build(settings, roles)
        .await
        .expect("build the application");
    let url = application.public_url();
    // `operator serve` made one on its first start; an API role gets one made here.
    let key = match (application.first_key(), &url) {
        (Some(key), _) => Some(key.to_owned()),
        (None, Some(_)) => Some(
            issue_key_with(
                application.services().repo.connection(),
                "default",
                Role::Owner,
                true,
            )
            .await,
        ),
        (None, None) => None,
    };
    let stopped = stop.clone().cancelled_owned();
    Started {
        url,
        key,
        running: tokio::spawn(application.run_until_stopped(stopped)),
    }
}

fn client(started: &Started) -> ApiClient {
    ApiClient::with_key(
        started.url.clone().expect("serves the API"),
        started.key.as_deref().expect("an owner key"),
    )
}

/// Every state a task ends in.
pub const ENDED: [&str; 5] = ["succeeded", "failed", "dead", "timed_out", "cancelled"];

impl TestApp {
    /// Submits `task` (expecting `202`) and waits until it ends; the finished task.
    pub async fn run(&self, task: &serde_json::Value) -> serde_json::Value {
        let (status, created) = self.submit(task).await;
        assert_eq!(status, 202, "{created}");
        self.wait_for(
            created["id"].as_str().expect("id"),
            &ENDED,
            crate::TASK_DEADLINE,
        )
        .await
    }

    /// `operator serve` on the embedded defaults: SQLite, the database queue, local files.
    pub async fn embedded() -> Self {
        Self::embedded_with(|_| {}).await
    }

    /// [`TestApp::embedded`] with its settings adjusted first.
    pub async fn embedded_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        operator_store::install_crypto_provider();
        let directory = tempfile::tempdir().expect("tempdir");
        let mut settings = embedded_settings(directory.path());
        adjust(&mut settings);
        let stop = CancellationToken::new();
        let serve = start(settings, Roles::SERVE, &stop).await;
        Self {
            api: client(&serve),
            stop,
            running: vec![serve.running],
            _database: None,
            _redis: None,
            _directory: directory,
        }
    }

    /// The distributed setup: an API instance, a separate worker instance and a
    /// scheduler, sharing PostgreSQL, Redis and S3.
    pub async fn distributed() -> Self {
        Self::distributed_with(|_| {}).await
    }

    /// [`TestApp::distributed`] with the settings of every instance adjusted first.
    pub async fn distributed_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        operator_store::install_crypto_provider();
        let directory = tempfile::tempdir().expect("tempdir");
        let database = TestDatabase::postgres().await;
        let redis = RedisPrefix::new();
        let mut settings = distributed_settings(&database, redis.prefix());
        adjust(&mut settings);
        let stop = CancellationToken::new();
        let api = start(settings.clone(), Roles::API, &stop).await;
        // As in a real deployment, the other roles know the API's public address (for
        // artifact links in webhook payloads).
        let mut settings = settings;
        settings.server.public_url = api.url.clone();
        let worker = start(settings.clone(), Roles::WORKER, &stop).await;
        let scheduler = start(settings, Roles::SCHEDULER, &stop).await;
        Self {
            api: client(&api),
            stop,
            running: vec![api.running, worker.running, scheduler.running],
            _database: Some(database),
            _redis: Some(redis),
            _directory: directory,
        }
    }

    /// A client holding a platform-admin key: on the embedded setup the owner key
    /// `operator serve` made (it runs the platform too), on the distributed one a key
    /// issued on its PostgreSQL.
    pub async fn platform_admin(&self) -> ApiClient {
        let Some(database) = self._database.as_ref() else {
            return self.api.clone();
        };
        let connection =
            operator_store::db::connect_url(database.url(), 2, std::time::Duration::from_secs(10))
                .await
                .expect("connect");
        let key = issue_key_with(&connection, "default", Role::Owner, true).await;
        ApiClient::with_key(self.api.base.clone(), &key)
    }

    /// Deletes every queue key of this deployment: what Redis losing its data (a flush,
    /// a restart without persistence) does to it.
    pub async fn lose_queue_data(&self) {
        let prefix = self
            ._redis
            .as_ref()
            .expect("a distributed app has a Redis prefix");
        let queue = operator_store::queue::redis::RedisQueue::connect(prefix.settings())
            .await
            .expect("connect to Redis");
        queue.purge().await.expect("purge");
    }

    /// Stops every instance and waits until they are down.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for running in self.running.drain(..) {
            running
                .await
                .expect("join")
                .expect("a role ended with an error");
        }
    }
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Where a scenario runs: `operator serve` on the embedded defaults, or separate API,
/// worker and scheduler instances on PostgreSQL, Redis and S3.
#[derive(Debug, Clone, Copy)]
pub enum Setup {
    Embedded,
    Distributed,
}

impl Setup {
    /// The application in this setup, its settings adjusted first.
    pub async fn start(self, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        match self {
            Self::Embedded => TestApp::embedded_with(adjust).await,
            Self::Distributed => TestApp::distributed_with(adjust).await,
        }
    }
}

/// Runs each `async fn(Setup)` named as two tests, `embedded::NAME` and
/// `distributed::NAME`.
macro_rules! on_both_setups {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Setup::Embedded).await;
                }
            )*
        }
        mod distributed {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Setup::Distributed).await;
                }
            )*
        }
    };
}

pub(crate) use on_both_setups;

/// Decodes a PNG; returns width, height and the RGB of pixel (x, y).
pub fn decode_png(bytes: &[u8], x: u32, y: u32) -> (u32, u32, [u8; 3]) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a valid PNG header");
    let mut buffer = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buffer).expect("a valid PNG image");
    let channels = frame.color_type.samples();
    let offset = (y as usize * frame.width as usize + x as usize) * channels;
    let pixel = [buffer[offset], buffer[offset + 1], buffer[offset + 2]];
    (frame.width, frame.height, pixel)
}

/// Counts the pages of a PDF (its `/Type /Page` objects).
pub fn pdf_page_count(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("/Type /Page")
        .filter(|(index, matched)| !text[index + matched.len()..].starts_with('s'))
        .count()
}

/// A flag that only one test's browsers carry (Chromium ignores flags it does not
/// know), so a test finds its own browser processes whether the tests share a process
/// (`cargo test`) or not (nextest), and never counts another test's.
pub struct BrowserMarker(String);

impl BrowserMarker {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(format!(
            "--operator-test-marker={}-{next}",
            std::process::id()
        ))
    }

    /// Adds the flag to the browsers these settings start.
    pub fn mark(&self, settings: &mut Settings) {
        settings.browser.extra_args.push(self.0.clone());
    }

    /// The command lines of the live processes that carry the flag, by pid.
    pub fn command_lines(&self) -> Vec<(u32, Vec<String>)> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc")
            .expect("proc")
            .filter_map(Result::ok)
        {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let arguments: Vec<String> = cmdline
                .split(|byte| *byte == 0)
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            if !zombie && arguments.contains(&self.0) {
                found.push((pid, arguments));
            }
        }
        found
    }

    /// The browsers' main processes: Chromium's own process has no `--type=`.
    pub fn browsers(&self) -> Vec<u32> {
        self.command_lines()
            .into_iter()
            .filter(|(_, arguments)| {
                !arguments
                    .iter()
                    .any(|argument| argument.starts_with("--type="))
            })
            .map(|(pid, _)| pid)
            .collect()
    }
}
