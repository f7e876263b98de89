//! The route table: every route the API serves, written once. The router is built from it
//! and [`routes`] lists it, so a test can hold the OpenAPI document to the same list.

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, on};

use super::{AppState, customers, events, health, inbound, kannel, unsubscribe, workflows};

/// A method a route answers (`GET` routes answer `HEAD` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl Verb {
    /// The method's name in lower case, as OpenAPI writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
            Verb::Patch => MethodFilter::PATCH,
            Verb::Delete => MethodFilter::DELETE,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; the handler checks what it needs (a signature, Basic credentials).
    Open,
    /// Only with `Authorization: Bearer <token>`.
    Token,
}

/// One route: a method on a path, in axum's and OpenAPI's shared `{param}` syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The method.
    pub verb: Verb,
    /// The path, such as `/v1/customers/{id}`.
    pub path: &'static str,
    /// Whether the bearer token is needed.
    pub access: Access,
}

/// Routers being built, one per access, with the list of what went into them.
pub(super) struct Table {
    /// Routes anyone may call.
    pub open: Router<AppState>,
    /// Routes behind the bearer token.
    pub token: Router<AppState>,
    /// Every route added.
    pub routes: Vec<Route>,
}

impl Table {
    fn add<H, T>(mut self, access: Access, verb: Verb, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let method_router = on(verb.filter(), handler);
        match access {
            Access::Open => self.open = self.open.route(path, method_router),
            Access::Token => self.token = self.token.route(path, method_router),
        }
        self.routes.push(Route { verb, path, access });
        self
    }
}

/// The whole table.
pub(super) fn table() -> Table {
    use Access::{Open, Token};
    use Verb::{Delete, Get, Patch, Post, Put};
    let customer = "/v1/customers/{id}";
    Table {
        open: Router::new(),
        token: Router::new(),
        routes: Vec::new(),
    }
    .add(Open, Get, "/healthz", health::healthz)
    .add(Open, Get, "/v1/openapi.json", health::openapi)
    .add(Open, Get, "/kannel/dlr", kannel::report)
    .add(Open, Post, "/kannel/dlr", kannel::report)
    .add(Open, Post, "/sms/inbound", inbound::sms)
    .add(Open, Get, "/unsubscribe/{token}", unsubscribe::confirm)
    .add(Open, Post, "/unsubscribe/{token}", unsubscribe::unsubscribe)
    .add(Token, Post, "/v1/events", events::post_one)
    .add(Token, Post, "/v1/events/batch", events::post_batch)
    .add(Token, Get, customer, customers::get_one)
    .add(Token, Put, customer, customers::put)
    .add(Token, Patch, customer, customers::patch)
    .add(Token, Delete, customer, customers::delete)
    .add(Token, Post, "/v1/bounces", inbound::bounce)
    .add(Token, Get, "/v1/workflows", workflows::list)
    .add(Token, Get, "/v1/workflows/{id}", workflows::get_one)
    .add(Token, Post, "/v1/workflows/{id}/pause", workflows::pause)
    .add(Token, Post, "/v1/workflows/{id}/resume", workflows::resume)
}

/// Every route the API serves.
pub fn routes() -> Vec<Route> {
    table().routes
}
