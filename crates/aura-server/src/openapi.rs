//! The OpenAPI 3.1 document of the HTTP API, served at `GET /api/openapi.json`: the handlers'
//! `#[utoipa::path]` annotations (gathered by `routes::ApiDoc`) and the model's schemas (`aura-model`'s
//! `openapi` feature), finished here with what every route shares (`finish`): the token scope each
//! needs (from `SecurityConfig::needed`, the table the server enforces), the refusals of the guard and
//! authorize stages, and the problem document every error answer carries; and the schemas no Rust type
//! derives (event stream events, a batch entry, a lease, log bytes).

use crate::auth::Scope;
use aura_model::{JobSpec, ResourceRequest, Timestamp};
use axum::http::Method;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, Object, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Header, OpenApi as Document, Ref, RefOr, SecurityRequirement,
};
use utoipa::{OpenApi, PartialSchema, ToSchema};

/// The media type of every error answer (RFC 9457).
const PROBLEM: &str = "application/problem+json";

/// The security scheme of API tokens, as operations name it.
const BEARER: &str = "bearer";
/// The security scheme of the dashboard's session cookie.
const SESSION: &str = "session";

/// What the document says besides its paths: its info, tags and the schemas only descriptions refer to.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Aura API",
        description = "The HTTP API of `aura serve`: submit and control jobs (programs run as supervised \
                       process trees, FFmpeg and other media tools first of all), follow their events, \
                       logs and progress, hold resources with leases, and read the engine's and the \
                       host's state.\n\n\
                       Every route but `/healthz`, `/readyz` and the dashboard's sign-in needs an \
                       API token (`Authorization: Bearer <token>`; `aura token` prints the daemon's \
                       local admin token), or the dashboard's session cookie. Scopes \
                       build on each other: `read` < `submit` < `admin`; each operation's security \
                       requirement names the scope it needs. A `submit` token acts on its own jobs only. \
                       Every error is an RFC 9457 problem document (`application/problem+json`) whose \
                       `code` is stable; clients match on it, never on `detail`."
    ),
    components(schemas(
        crate::error::Problem,
        aura_model::JobEventRecord,
        aura_model::EngineEventRecord,
        aura_model::ProgressUpdate,
        StreamLog,
        StreamLagged,
        StreamEnd,
    )),
    tags(
        (name = "health", description = "Liveness and readiness, without a token."),
        (name = "jobs", description = "Submit, list, inspect and control jobs."),
        (name = "events", description = "Event logs and live event streams."),
        (name = "leases", description = "Resources held by work outside Aura's processes."),
        (name = "node", description = "The daemon as a whole: status, drain, diagnostics."),
        (name = "metrics", description = "Utilization, host and process samples, Prometheus."),
        (name = "session", description = "The dashboard's sign-in: a session cookie for an API token."),
        (name = "files", description = "Uploads for jobs' inputs, and jobs' files (outputs) to download."),
    )
)]
struct Base;

/// The document of `paths` (the routes' annotations, `routes::ApiDoc`), finished and encoded: `needed`
/// says which scope a route needs (`SecurityConfig::needed`, the table the server enforces; `None`:
/// public), `session_cookie` names the dashboard's cookie.
pub(crate) fn encode(
    paths: Document,
    needed: impl Fn(&Method, &str) -> Option<Scope>,
    session_cookie: &str,
) -> Result<bytes::Bytes, String> {
    let mut doc = Base::openapi();
    doc.merge(paths);
    finish(&mut doc, needed, session_cookie);
    doc.to_json()
        .map(bytes::Bytes::from)
        .map_err(|e| format!("encoding the OpenAPI document: {e}"))
}

/// What every operation shares, added after the annotations: the security schemes and each operation's
/// requirement, the refusals of `security`'s two stages, the `/metrics` alias, and the problem document
/// on every error.
fn finish(
    doc: &mut Document,
    needed: impl Fn(&Method, &str) -> Option<Scope>,
    session_cookie: &str,
) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token: the daemon's local admin token (`aura token`) or one of \
                     `[[api.tokens]]`. The requirement's list names the scope the operation \
                     needs (read < submit < admin).",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        SESSION,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            session_cookie,
            "The dashboard's session (`POST /api/session`), with its token's scope. A write \
             authenticated by it must carry an `Origin` header.",
        ))),
    );
    // One handler answers both paths: the scrape Prometheus expects, and the same under /api.
    if let Some(item) = doc.paths.paths.get("/metrics").cloned() {
        let mut alias = item;
        if let Some(get) = alias.get.as_mut() {
            get.operation_id = Some("metrics_api".into());
        }
        doc.paths
            .paths
            .insert("/api/metrics/prometheus".into(), alias);
    }
    for (path, item) in &mut doc.paths.paths {
        for (method, operation) in operations(item) {
            let scope = needed(&method, path);
            // Before the conventions, which give every error answer its problem document.
            if crate::forward::forwards(&method, path) {
                forwarded(operation);
            }
            conventions(path, operation, scope);
        }
    }
}

/// The operations of a path item, with their methods.
fn operations(item: &mut PathItem) -> Vec<(Method, &mut Operation)> {
    [
        (Method::GET, item.get.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
        (Method::HEAD, item.head.as_mut()),
        (Method::OPTIONS, item.options.as_mut()),
        (Method::TRACE, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|o| (method, o)))
    .collect()
}

/// Routes that never reach the engine (no 500 from a failed engine call, no 503 while shutting down
/// beyond the connection cap).
const ENGINE_FREE: &[&str] = &["/healthz", "/readyz", "/api/openapi.json", "/api/session"];

/// One operation's share of the conventions.
fn conventions(path: &str, operation: &mut Operation, scope: Option<Scope>) {
    // A body of raw bytes (an upload) is streamed: its handler documents its own limits and takes any
    // content type.
    let raw_body = operation
        .request_body
        .as_ref()
        .is_some_and(|body| !body.content.contains_key("application/json"));
    let with_body = operation.request_body.is_some() && !raw_body;
    if let Some(scope) = scope {
        operation.security = Some(vec![
            SecurityRequirement::new(BEARER, [scope.as_str()]),
            SecurityRequirement::new(SESSION, [scope.as_str()]),
        ]);
        let needs = format!("Needs a token of scope `{scope}` or above.");
        operation.description = Some(match operation.description.take() {
            Some(text) => format!("{text}\n\n{needs}"),
            None => needs,
        });
        add(
            operation,
            401,
            "No token, a malformed `Authorization` header, or a token that is not valid \
             (`unauthorized`).",
        );
        add(
            operation,
            403,
            &format!("The token's scope is below `{scope}` (`insufficient_scope`)."),
        );
    }
    // The guard stage, before routing: every request.
    add(
        operation,
        403,
        "The `Host` header is not one the daemon answers to (`host_not_allowed`), or the `Origin` is \
         another site's (`origin_not_allowed`).",
    );
    add(
        operation,
        414,
        "The request target is longer than `api.max_uri_bytes` (`uri_too_long`).",
    );
    add(
        operation,
        431,
        "The request headers are larger than `api.max_header_bytes` (`headers_too_large`).",
    );
    add(
        operation,
        503,
        "Every connection slot is busy (`too_many_connections`); retry after `Retry-After`.",
    );
    if with_body {
        add(operation, 400, "The body is not JSON (`bad_request`).");
        add(
            operation,
            408,
            "The body did not arrive within `api.request_timeout` (`request_timeout`).",
        );
        add(
            operation,
            413,
            "The body is larger than `api.max_body` (`payload_too_large`).",
        );
        add(
            operation,
            415,
            "The body is not sent as `Content-Type: application/json` (`unsupported_media_type`).",
        );
    } else if !raw_body {
        add(
            operation,
            415,
            "A body was sent that is not `Content-Type: application/json` \
             (`unsupported_media_type`); this operation takes none.",
        );
    }
    if !ENGINE_FREE.contains(&path) {
        add(
            operation,
            500,
            "A fault in the daemon (`internal`); `request_id` names the details in its log.",
        );
        add(
            operation,
            503,
            "The daemon is shutting down (`shutting_down`).",
        );
    }
    for (status, response) in &mut operation.responses.responses {
        let RefOr::T(response) = response else {
            continue;
        };
        if !status.starts_with('4') && !status.starts_with('5') {
            continue;
        }
        if !response.content.contains_key(PROBLEM) {
            response.content.insert(
                PROBLEM.into(),
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            );
        }
        if status == "401" {
            response.headers.insert(
                "WWW-Authenticate".into(),
                header(Type::String, "`Bearer realm=\"aura\"`."),
            );
        }
        if matches!(status.as_str(), "429" | "503" | "507") {
            response.headers.insert(
                "Retry-After".into(),
                header(
                    Type::Integer,
                    "Seconds to wait before trying again (on `queue_full`, `token_queue_full`, \
                     `too_many_connections`, `too_many_subscribers`, `storage_exhausted` and \
                     `insufficient_storage`).",
                ),
            );
        }
    }
}

/// The answers of an operation fleet mode forwards to the node that holds the job (`forward`).
fn forwarded(operation: &mut Operation) {
    let note =
        "In fleet mode the request is forwarded to the node that holds the job, and its answer \
                passed back as it comes.";
    operation.description = Some(match operation.description.take() {
        Some(text) => format!("{text}\n\n{note}"),
        None => note.to_owned(),
    });
    add(
        operation,
        502,
        "Fleet mode: the node that holds the job did not answer (`node_unreachable`).",
    );
    add(
        operation,
        503,
        "Fleet mode: the job is on another node and this one has no fleet token to forward the \
         request with (`fleet_token_missing`).",
    );
}

/// Adds `status` with `description` to an operation's responses, or adds the description to the one it
/// has (a status can have several causes).
fn add(operation: &mut Operation, status: u16, description: &str) {
    let responses = &mut operation.responses.responses;
    match responses.get_mut(&status.to_string()) {
        Some(RefOr::T(response)) => {
            if !response.description.contains(description) {
                response.description = format!("{}\n\n{description}", response.description);
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            responses.insert(
                status.to_string(),
                RefOr::T(ResponseBuilder::new().description(description).build()),
            );
        }
    }
}

fn header(kind: Type, description: &str) -> Header {
    let mut header = Header::new(ObjectBuilder::new().schema_type(kind));
    header.description = Some(description.into());
    header
}

/// One event of an event stream (`text/event-stream`), as an SSE parser reads it: its `event` name, its
/// `id` (logged events only) and its `data`, one line of JSON whose schema depends on the event.
pub(crate) struct StreamEvent;

impl PartialSchema for StreamEvent {
    fn schema() -> RefOr<Schema> {
        let kind = |name: &str, data: &str, logged: bool, description: &str| {
            let mut event = ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(description))
                .property(
                    "event",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([name])),
                )
                .required("event")
                .property("data", json_text(data))
                .required("data");
            if logged {
                event = event
                    .property(
                        "id",
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some(r"^[0-9]+(\.[0-9]+)?$"))
                            .description(Some(
                                "Where the stream stands: `J` on a job's stream, `J.E` on the \
                                 all-jobs stream (the last job and engine event sequence numbers \
                                 sent); send it back as `Last-Event-ID` to resume after it.",
                            )),
                    )
                    .required("id");
            }
            event
        };
        OneOfBuilder::new()
            .item(kind("job", "JobEventRecord", true, "An event of a job's log."))
            .item(kind(
                "engine",
                "EngineEventRecord",
                true,
                "An event of the engine's log (the all-jobs stream, unless `engine=false`).",
            ))
            .item(kind(
                "progress",
                "ProgressUpdate",
                false,
                "A running job's progress (unless `progress=false`).",
            ))
            .item(kind(
                "log",
                "StreamLog",
                false,
                "New output of the captured stream a job's stream asked for with `logs`.",
            ))
            .item(kind(
                "lagged",
                "StreamLagged",
                false,
                "The client fell a whole buffer behind: the stream ends; reconnect with \
                 `Last-Event-ID: resume_after` to catch up from the log.",
            ))
            .item(kind(
                "end",
                "StreamEnd",
                false,
                "The last event: a job's stream ends with its job, any stream when the daemon shuts \
                 down.",
            ))
            .description(Some(
                "One server-sent event. An idle stream gets a comment line (`:`) now and then, which \
                 keeps it (and the proxies between) alive. A logged event of a kind this version \
                 does not know (written by another version of Aura) is sent as it was stored.",
            ))
            .into()
    }
}

impl ToSchema for StreamEvent {}

/// A string holding one line of JSON of schema `name` (JSON Schema's `contentSchema`).
fn json_text(name: &str) -> Object {
    let mut text = ObjectBuilder::new()
        .schema_type(Type::String)
        .content_media_type("application/json")
        .description(Some(format!("A `{name}`, as JSON.")))
        .build();
    // utoipa has no builder for `contentSchema`; the document is JSON Schema 2020-12, which has it.
    text.extensions = Some(utoipa::openapi::extensions::Extensions::from_iter([(
        "contentSchema",
        serde_json::json!({ "$ref": format!("#/components/schemas/{name}") }),
    )]));
    text
}

/// The `data` of a `log` event: new output of a job's captured stream (`sse::Streaming::poll_log`).
#[derive(ToSchema)]
#[allow(dead_code)] // Never built: the streams write these with `json!`; only the schema is used.
pub(crate) struct StreamLog {
    /// The job.
    job_id: aura_model::JobId,
    /// `stdout` or `stderr`.
    #[schema(pattern = "^(stdout|stderr)$")]
    stream: String,
    /// The logical offset of the text's first byte.
    offset: u64,
    /// The output, as UTF-8 (invalid sequences replaced).
    text: String,
}

/// The `data` of a `lagged` event (`sse::Streaming::live`).
#[derive(ToSchema)]
#[allow(dead_code)] // Never built, as `StreamLog`.
pub(crate) struct StreamLagged {
    /// Events this client missed.
    missed: u64,
    /// The event id to resume after (`Last-Event-ID`).
    resume_after: String,
    /// What happened, in words.
    detail: String,
}

/// The `data` of an `end` event (`sse::Streaming::end`, `end_if_job_finished`).
#[derive(ToSchema)]
#[allow(dead_code)] // Never built, as `StreamLog`.
pub(crate) struct StreamEnd {
    /// Why the stream ends.
    reason: String,
    /// The job whose stream ended with it.
    #[schema(required = false)]
    job_id: Option<aura_model::JobId>,
    /// That job's outcome name (`succeeded`, `failed`, …).
    #[schema(required = false)]
    outcome: Option<String>,
}

/// The raw bytes of a job's captured output.
pub(crate) struct LogBytes;

impl PartialSchema for LogBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .description(Some(
                "Exactly the bytes the job wrote, from the logical offset in `Aura-Log-Offset`.",
            ))
            .into()
    }
}

impl ToSchema for LogBytes {}

/// A Prometheus scrape.
pub(crate) struct Exposition;

impl PartialSchema for Exposition {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "The metrics in the Prometheus text format (0.0.4), or OpenMetrics 1.0.0 when \
                 `Accept` prefers `application/openmetrics-text`.",
            ))
            .into()
    }
}

impl ToSchema for Exposition {}

/// An OpenAPI document: this one.
pub(crate) struct OpenApiDocument;

impl PartialSchema for OpenApiDocument {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("An OpenAPI 3.1 document (this one)."))
            .property(
                "openapi",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^3\.1\.\d+$")),
            )
            .required("openapi")
            .property("info", Object::with_type(Type::Object))
            .required("info")
            .property("paths", Object::with_type(Type::Object))
            .required("paths")
            .property("components", Object::with_type(Type::Object))
            .into()
    }
}

impl ToSchema for OpenApiDocument {}

/// `POST /api/jobs/batch`'s body: the jobs of one piece of work, queued atomically.
pub(crate) struct BatchRequest;

impl PartialSchema for BatchRequest {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The jobs of one piece of work, queued atomically: all of them or none. The answer \
                 lists them in the same order.",
            ))
            .property(
                "jobs",
                ArrayBuilder::new()
                    .items(batch_entry())
                    .min_items(Some(1))
                    .max_items(Some(aura_model::batch::MAX_BATCH)),
            )
            .required("jobs")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for BatchRequest {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        // An entry is `JobSpec`'s schema inlined: what it refers to must be in the document too.
        <JobSpec as ToSchema>::schemas(schemas);
    }
}

/// One entry of a batch: a job spec with an optional `name`, whose `after` may also name earlier
/// entries. Built from `JobSpec`'s own schema, so the two cannot drift.
fn batch_entry() -> Object {
    let RefOr::T(Schema::Object(mut entry)) = JobSpec::schema() else {
        // `JobSpec` derives a plain object schema; anything else would be a change of utoipa's.
        return Object::with_type(Type::Object);
    };
    entry.description = Some(
        "A job spec, plus `name`: what later entries' `after` may call it. `after` holds ids of \
         existing jobs and names of earlier entries (names refer backwards only, so a batch has no \
         cycle)."
            .into(),
    );
    entry.properties.insert(
        "name".into(),
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                Type::String,
                Type::Null,
            ]))
            .pattern(Some("^[A-Za-z0-9_.-]{1,64}$"))
            .into(),
    );
    entry.properties.insert(
        "after".into(),
        ArrayBuilder::new()
            .items(
                OneOfBuilder::new()
                    .item(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                            .minimum(Some(1))
                            .description(Some("An existing job's id.")),
                    )
                    .item(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some("^[A-Za-z0-9_.-]{1,64}$"))
                            .description(Some("The name of an earlier entry.")),
                    ),
            )
            .max_items(Some(aura_model::limits::MAX_DEPENDENCIES))
            .into(),
    );
    entry
}

/// A lease as the API shows it: `aura_engine::LeaseInfo`, field for field (the engine crate has no
/// schemas of its own; `the_lease_schema_is_what_a_lease_serialises_to` holds the two together).
#[derive(ToSchema)]
#[schema(as = LeaseInfo)]
#[allow(dead_code)] // Never built: only its schema is used.
pub(crate) struct LeaseInfoSchema {
    /// The lease's id, for renew and release; never reused, even across restarts.
    id: u64,
    /// Who holds it, as the holder named itself.
    holder: Option<String>,
    /// What it reserves.
    resources: ResourceRequest,
    /// How long it lasts without a renew; each renew extends it by this much from then.
    #[schema(value_type = aura_model::openapi::Duration)]
    ttl: String,
    /// When it expires unless renewed.
    expires_at: Timestamp,
    /// GPU devices granted.
    gpus: Vec<u32>,
}

/// `GET /api/metrics/system`: the latest host sample, or with `history=true` the recent ones.
pub(crate) struct SystemAnswer;

impl PartialSchema for SystemAnswer {
    fn schema() -> RefOr<Schema> {
        let snapshot = || Ref::from_schema_name("HostSnapshot");
        OneOfBuilder::new()
            .item(snapshot())
            .item(ArrayBuilder::new().items(snapshot()))
            .description(Some(
                "The latest sample; with `history=true`, the recent samples, oldest first.",
            ))
            .into()
    }
}

impl ToSchema for SystemAnswer {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            "HostSnapshot".into(),
            aura_model::host::HostSnapshot::schema(),
        ));
        <aura_model::host::HostSnapshot as ToSchema>::schemas(schemas);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value() -> serde_json::Value {
        let bytes = crate::routes::openapi_document().expect("the document encodes");
        serde_json::from_slice(&bytes).expect("the document is JSON")
    }

    #[test]
    fn the_job_list_documents_its_repeatable_label_filter() {
        let doc = value();
        let params = doc["paths"]["/api/jobs"]["get"]["parameters"]
            .as_array()
            .expect("list parameters");
        let label = params
            .iter()
            .find(|p| p["name"] == "label")
            .expect("a label parameter");
        assert_eq!(label["in"], "query");
        assert_eq!(label["required"], false);
        // Repeated as `label=K=V&label=K2=V2`: an array, each item its own pair.
        assert_eq!(
            (&label["style"], &label["explode"]),
            (&"form".into(), &true.into())
        );
        assert_eq!(label["schema"]["type"], "array");
        assert_eq!(label["schema"]["items"]["type"], "string");
        assert_eq!(label["schema"]["maxItems"], aura_model::limits::MAX_LABELS);
        let says = label["description"].as_str().expect("a description");
        assert!(
            says.contains("KEY=VALUE") && says.contains("repeatable"),
            "{says}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_named_and_versioned() {
        let doc = value();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "Aura API");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn every_error_answer_is_a_problem_and_every_private_route_needs_its_scope() {
        let doc = value();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let id = operation["operationId"].as_str().expect("an operation id");
                assert!(ids.insert(id.to_owned()), "operation id {id} twice");
                let responses = operation["responses"].as_object().expect("responses");
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"][PROBLEM]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                    }
                }
                let public = matches!(
                    (method.as_str(), path.as_str()),
                    ("get", "/healthz" | "/readyz" | "/api/session") | ("post", "/api/session")
                );
                assert_eq!(
                    operation.get("security").is_none(),
                    public,
                    "{method} {path}"
                );
                // Sign-in and "who am I" are public but refuse a wrong token (in the body, the header).
                let no_token = public && path != "/api/session";
                assert_eq!(responses.contains_key("401"), !no_token, "{method} {path}");
            }
        }
    }

    #[test]
    fn the_lease_schema_is_what_a_lease_serialises_to() {
        let lease = aura_engine::LeaseInfo {
            id: 7,
            holder: None,
            resources: Default::default(),
            ttl: std::time::Duration::from_secs(90),
            expires_at: Timestamp::from_unix_millis(0),
            gpus: vec![0],
        };
        let written = serde_json::to_value(&lease).expect("a lease serialises");
        let written: std::collections::BTreeSet<String> = written
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect();
        let doc = value();
        let schema = &doc["components"]["schemas"]["LeaseInfo"];
        let documented: std::collections::BTreeSet<String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        assert_eq!(written, documented);
        assert_eq!(
            serde_json::to_value(&lease).expect("a lease serialises")["ttl"],
            "1m 30s"
        );
    }
}
