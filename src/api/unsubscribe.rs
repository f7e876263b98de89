//! `/unsubscribe/{token}`: the link in every marketing message. `GET` shows a confirmation
//! page; `POST` unsubscribes (RFC 8058 one-click, and the page's button). Tokens are
//! HMAC-signed, so no lookup is needed to trust them; a tampered token is refused.

use axum::extract::State;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::Html;

use super::extract::Path;
use super::{ApiError, AppState};
use crate::model::Channel;
use crate::unsubscribe::verify;

/// A page with the headers that keep it to itself: not framed (a hidden button on another
/// site), not cached, no referrer (the URL holds the token), nothing but its own styles.
type Page = ([(HeaderName, &'static str); 4], Html<String>);

fn page(title: &str, body: &str) -> Page {
    let headers = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (
        headers,
        Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title></head><body style=\"font-family:sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem\">\
         <h1 style=\"font-size:1.4rem\">{title}</h1>{body}</body></html>"
        )),
    )
}

fn channel_words(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "emails",
        Channel::Sms => "text messages",
    }
}

/// The confirmation page.
pub(super) async fn confirm(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> (StatusCode, Page) {
    match verify(&state.unsubscribe_key, &token) {
        Some((_, channel)) => (
            StatusCode::OK,
            page(
                "Unsubscribe",
                &format!(
                    "<p>Stop receiving marketing {}?</p><form method=\"post\"><button type=\"submit\" \
                     style=\"font-size:1rem;padding:.5rem 1rem\">Unsubscribe</button></form>",
                    channel_words(channel)
                ),
            ),
        ),
        None => (
            StatusCode::BAD_REQUEST,
            page(
                "Link not valid",
                "<p>This unsubscribe link is not valid. Please use the link from a recent message.</p>",
            ),
        ),
    }
}

/// Unsubscribes: consent for the channel is withdrawn and queued marketing messages on it
/// are cancelled, in one transaction.
pub(super) async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<(StatusCode, Page), ApiError> {
    let Some((customer_id, channel)) = verify(&state.unsubscribe_key, &token) else {
        return Ok((
            StatusCode::BAD_REQUEST,
            page(
                "Link not valid",
                "<p>This unsubscribe link is not valid.</p>",
            ),
        ));
    };
    let mut tx = state.store.begin().await?;
    if let Some(mut customer) = tx.customer(&customer_id).await? {
        match channel {
            Channel::Email => customer.consent.email = false,
            Channel::Sms => customer.consent.sms = false,
        }
        tx.put_customer(&customer, state.clock.now()).await?;
        tx.cancel_pending(&customer_id, channel, state.clock.now())
            .await?;
    }
    tx.commit().await?;
    tracing::info!(customer.id = %customer_id, channel = %channel, "Customer unsubscribed.");
    Ok((
        StatusCode::OK,
        page(
            "You are unsubscribed",
            &format!(
                "<p>You will get no more marketing {} from us.</p>",
                channel_words(channel)
            ),
        ),
    ))
}
