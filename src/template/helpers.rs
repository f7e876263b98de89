//! Template helpers: dates in the customer's zone and locale, money, and defaults.
//!
//! Helpers read only their parameters and the render context: never the environment,
//! files, configuration or the clock.

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, PathAndJson, RenderContext,
    RenderErrorReason,
};
use jiff::Timestamp;
use serde_json::Value;

use crate::engine::time::parse_date;
use crate::model::check_zone;

/// Registers every helper on `registry`.
pub fn register(registry: &mut Handlebars<'_>) {
    registry.register_helper("date", Box::new(date));
    registry.register_helper("money", Box::new(money));
    registry.register_helper("default", Box::new(default));
}

fn fail(message: String) -> handlebars::RenderError {
    RenderErrorReason::Other(message).into()
}

/// A parameter as an error message shows it: the variable's path and its value, such as
/// `customer.attributes.birthday (null)`, or just the value of a literal.
fn describe(param: &PathAndJson) -> String {
    let value = if param.is_value_missing() {
        "missing".to_owned()
    } else {
        param.value().to_string()
    };
    match param.relative_path() {
        Some(path) => format!("{path} ({value})"),
        None => value,
    }
}

/// Writes a helper's output through the registry's escape function, as handlebars does for
/// a plain `{{value}}`: escaped for HTML in the `html` registry, literal in the `plain` one,
/// and never escaped twice (handlebars disables escaping for subexpressions, whose value is
/// escaped where it is finally written).
fn write(text: &str, r: &Handlebars, rc: &RenderContext, out: &mut dyn Output) -> HelperResult {
    if rc.is_disable_escape() {
        out.write(text)?;
    } else {
        out.write(&r.get_escape_fn()(text))?;
    }
    Ok(())
}

/// The customer's locale language (`de` of `de-AT`), `en` when unset.
fn language(ctx: &Context) -> String {
    ctx.data()
        .pointer("/customer/locale")
        .and_then(Value::as_str)
        .and_then(|l| l.split(['-', '_']).next())
        .unwrap_or("en")
        .to_ascii_lowercase()
}

const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const MONTHS_DE: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];
const MONTHS_FR: [&str; 12] = [
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
];
const MONTHS_ES: [&str; 12] = [
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
];

/// `{{date value}}`, `{{date value format="short"}}` or `{{date value format="%Y-%m-%d"}}`.
///
/// `value` is an RFC 3339 timestamp (shown in the customer's time zone) or a `YYYY-MM-DD`
/// date. `long` (the default) spells the month in the customer's language (en, de, fr, es);
/// `short` is numeric in the locale's order; anything else is a strftime pattern.
fn date(
    h: &Helper,
    r: &Handlebars,
    ctx: &Context,
    rc: &mut RenderContext,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h
        .param(0)
        .ok_or_else(|| fail("date needs a value: {{date event.timestamp}}".into()))?;
    let zone_name = ctx
        .data()
        .pointer("/customer/timezone")
        .and_then(Value::as_str);
    let tz = zone_name
        .and_then(|z| check_zone(z).ok())
        .unwrap_or(jiff::tz::TimeZone::UTC);
    let raw = value.value();
    let date = raw
        .as_str()
        .and_then(|s| s.parse::<Timestamp>().ok())
        .map(|ts| ts.to_zoned(tz.clone()).date())
        .or_else(|| parse_date(raw, &tz))
        .ok_or_else(|| {
            fail(format!(
                "date cannot read {} as a date or timestamp",
                describe(value)
            ))
        })?;
    let format = h
        .hash_get("format")
        .and_then(|f| f.value().as_str())
        .unwrap_or("long");
    let lang = language(ctx);
    let month = usize::try_from(date.month() - 1).unwrap_or(0);
    let text = match format {
        "long" => match lang.as_str() {
            "de" => format!("{}. {} {}", date.day(), MONTHS_DE[month], date.year()),
            "fr" => format!("{} {} {}", date.day(), MONTHS_FR[month], date.year()),
            "es" => format!("{} de {} de {}", date.day(), MONTHS_ES[month], date.year()),
            _ => format!("{} {}, {}", MONTHS_EN[month], date.day(), date.year()),
        },
        "short" => {
            let us = ctx
                .data()
                .pointer("/customer/locale")
                .and_then(Value::as_str)
                .is_none_or(|l| l.eq_ignore_ascii_case("en-US") || l.eq_ignore_ascii_case("en"));
            match lang.as_str() {
                "de" => date.strftime("%d.%m.%Y").to_string(),
                "en" if us => date.strftime("%m/%d/%Y").to_string(),
                _ => date.strftime("%d/%m/%Y").to_string(),
            }
        }
        pattern => jiff::fmt::strtime::format(pattern, date).map_err(|err| {
            fail(format!(
                "date cannot format {} with {pattern:?}: {err}",
                describe(value)
            ))
        })?,
    };
    write(&text, r, rc, out)
}

/// `{{money amount currency="EUR"}}`: two decimals (none for JPY), the symbol placed and the
/// decimal mark chosen by the customer's language. Default currency: USD.
fn money(
    h: &Helper,
    r: &Handlebars,
    ctx: &Context,
    rc: &mut RenderContext,
    out: &mut dyn Output,
) -> HelperResult {
    let value = h
        .param(0)
        .ok_or_else(|| fail("money needs an amount: {{money event.properties.value}}".into()))?;
    let amount = match value.value() {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        fail(format!(
            "money cannot read {} as an amount",
            describe(value)
        ))
    })?;
    let currency = h
        .hash_get("currency")
        .and_then(|c| c.value().as_str())
        .unwrap_or("USD")
        .to_ascii_uppercase();
    write(&format_money(amount, &currency, &language(ctx)), r, rc, out)
}

/// Formats an amount for a language: `$1,234.50` in English, `1.234,50 €` in German.
pub fn format_money(amount: f64, currency: &str, lang: &str) -> String {
    let decimals = if currency == "JPY" { 0 } else { 2 };
    let fixed = format!("{:.*}", decimals, amount.abs());
    let (int_part, frac_part) = fixed.split_once('.').unwrap_or((&fixed, ""));
    let comma_decimal = matches!(lang, "de" | "fr" | "es" | "it" | "nl" | "pt");
    let (group, mark) = match (comma_decimal, lang) {
        (true, "fr") => ('\u{202f}', ','),
        (true, _) => ('.', ','),
        (false, _) => (',', '.'),
    };
    let mut grouped = String::new();
    for (i, c) in int_part.chars().enumerate() {
        if i > 0 && (int_part.len() - i) % 3 == 0 {
            grouped.push(group);
        }
        grouped.push(c);
    }
    let number = if frac_part.is_empty() {
        grouped
    } else {
        format!("{grouped}{mark}{frac_part}")
    };
    let sign = if amount < 0.0 { "-" } else { "" };
    let symbol = match currency {
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" => "¥",
        other => other,
    };
    if comma_decimal {
        format!("{sign}{number} {symbol}")
    } else if symbol.len() == 3 && symbol.chars().all(|c| c.is_ascii_uppercase()) {
        format!("{sign}{symbol} {number}")
    } else {
        format!("{sign}{symbol}{number}")
    }
}

/// `{{default value "fallback"}}`: the value when present and not empty, else the fallback.
/// A missing value is not an error here, even in strict mode: that is the helper's purpose.
fn default(
    h: &Helper,
    r: &Handlebars,
    _: &Context,
    rc: &mut RenderContext,
    out: &mut dyn Output,
) -> HelperResult {
    let fallback = h.param(1).ok_or_else(|| {
        fail(
            "default needs a fallback: {{default customer.attributes.first_name \"there\"}}".into(),
        )
    })?;
    let chosen = h
        .param(0)
        .filter(|v| !v.is_value_missing())
        .map(|v| v.value())
        .filter(|v| !matches!(v, Value::Null) && v.as_str() != Some(""))
        .unwrap_or(fallback.value());
    match chosen {
        Value::String(s) => write(s, r, rc, out),
        other => write(&other.to_string(), r, rc, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_follows_the_language() {
        assert_eq!(format_money(1234.5, "USD", "en"), "$1,234.50");
        assert_eq!(format_money(1234.5, "EUR", "de"), "1.234,50 €");
        assert_eq!(format_money(59.0, "EUR", "en"), "€59.00");
        assert_eq!(format_money(1500.0, "JPY", "en"), "¥1,500");
        assert_eq!(format_money(-5.0, "CHF", "en"), "-CHF 5.00");
    }
}
