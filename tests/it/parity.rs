//! The simulator and the runtime are one shell: every timeline the simulator tests assert is
//! also played on the runtime, twice — on a real SQLite file built by `serve` and on a fresh
//! schema of the test PostgreSQL — with events stored as the API stores them, the
//! scheduler's drive ticked at each moment on a `ManualClock`, and the real dispatcher
//! delivering to the outbox folder; the three journals must be identical to the second,
//! line by line. `helpers::timeline` and `helpers::lines` call [`played_both`].

use std::sync::Arc;

use jiff::Timestamp;
use trellis::channels::dispatch;
use trellis::journey::{Catalog, Line, Shell};
use trellis::model::{Customer, CustomerId, Event};
use trellis::simulate::{self, Options, Stage};
use trellis::store::{self, JourneyStore, Store};

use crate::app::{TestApp, spawn_app, spawn_app_in};

/// The runtime as a stage: `serve`'s store and dispatcher.
struct Runtime {
    app: TestApp,
}

impl JourneyStore for Runtime {
    type Tx = <Store as JourneyStore>::Tx;

    async fn begin(&self) -> Result<Self::Tx, store::Error> {
        JourneyStore::begin(&self.app.service.scheduler.store).await
    }

    async fn paused(&self) -> Result<std::collections::BTreeSet<String>, store::Error> {
        JourneyStore::paused(&self.app.service.scheduler.store).await
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, store::Error> {
        self.app.service.scheduler.store.next_due().await
    }

    async fn load_customers(
        &self,
        ids: &[CustomerId],
        spec: &trellis::journey::LoadSpec,
    ) -> Result<Vec<trellis::journey::CustomerState>, store::Error> {
        JourneyStore::load_customers(&self.app.service.scheduler.store, ids, spec).await
    }

    async fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CustomerId>, store::Error> {
        JourneyStore::customer_ids_after(&self.app.service.scheduler.store, after, limit).await
    }

    async fn order_stats(&self) -> Result<Vec<trellis::traits::OrderStats>, store::Error> {
        JourneyStore::order_stats(&self.app.service.scheduler.store).await
    }

    async fn write_traits(
        &self,
        traits: &[trellis::traits::Traits],
        now: Timestamp,
    ) -> Result<(), store::Error> {
        JourneyStore::write_traits(&self.app.service.scheduler.store, traits, now).await
    }
}

impl Stage for Runtime {
    async fn put_customer(&self, customer: &Customer, now: Timestamp) -> Result<(), store::Error> {
        Stage::put_customer(&self.app.service.scheduler.store, customer, now).await
    }

    async fn insert_event(
        &self,
        customer: &CustomerId,
        event: &Event,
        now: Timestamp,
    ) -> Result<(), store::Error> {
        Stage::insert_event(&self.app.service.scheduler.store, customer, event, now).await
    }

    async fn patch_customer(
        &self,
        customer: &CustomerId,
        patch: &trellis::model::CustomerPatch,
        now: Timestamp,
    ) -> Result<(), store::Error> {
        Stage::patch_customer(&self.app.service.scheduler.store, customer, patch, now).await
    }

    async fn suppress(
        &self,
        channel: trellis::model::Channel,
        address: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), store::Error> {
        Stage::suppress(
            &self.app.service.scheduler.store,
            channel,
            address,
            reason,
            now,
        )
        .await
    }

    async fn deliver(&self, now: Timestamp) -> Result<(), store::Error> {
        self.app.clock.set(now);
        while dispatch::drain(&self.app.service.dispatcher, now)
            .await?
            .attempted()
            > 0
        {}
        Ok(())
    }
}

/// The database a runtime plays on.
#[derive(Debug, Clone, Copy)]
enum Database {
    /// A SQLite file in the app's folder.
    Sqlite,
    /// A fresh schema of the test PostgreSQL.
    Postgres,
}

/// The journal of the runtime playing the script on `database`, with the simulator's shell
/// settings over `serve`'s catalog registration (the workflows recorded in the database).
async fn played_on_the_runtime(
    workflows: &[trellis::workflow::Workflow],
    customer: Customer,
    events: Vec<Event>,
    options: &Options,
    database: Database,
) -> Vec<Line> {
    let bounds = simulate::bounds(&events, options).expect("the script has bounds");
    // Each named outright, so the two runs differ whatever `TRELLIS_TEST_STORE` says.
    let (app, _schema) = match database {
        Database::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("parity.db").display());
            (spawn_app_in(dir, &["--database-url", &url]).await, None)
        }
        Database::Postgres => {
            let (url, schema) = store::testing::temp_postgres_url().await;
            (spawn_app(&["--database-url", &url]).await, Some(schema))
        }
    };
    let runtime = Runtime { app };
    assert_eq!(
        runtime
            .app
            .service
            .scheduler
            .store
            .postgres_pool()
            .is_some(),
        matches!(database, Database::Postgres),
        "the runtime plays on {database:?}"
    );
    let store = &runtime.app.service.scheduler.store;
    let catalog = Catalog::register(
        store,
        workflows.to_vec(),
        options.segments.clone(),
        bounds.0,
    )
    .await
    .expect("the workflow registers");
    let shell = Shell {
        catalog: Arc::new(catalog),
        ..simulate::shell(workflows, Arc::new(crate::helpers::templates()), options)
    };
    simulate::timeline(
        &runtime,
        &shell,
        customer,
        events,
        bounds,
        options.segment_refresh,
    )
    .await
    .expect("the runtime plays the script")
}

/// The simulator's timeline, after checking that the runtime plays the same one.
///
/// # Panics
/// When the two differ, naming the first line that does.
pub fn played_both(
    workflows: &[trellis::workflow::Workflow],
    customer: Customer,
    events: Vec<Event>,
    options: Options,
) -> Vec<Line> {
    let simulated = simulate::run(
        workflows,
        Arc::new(crate::helpers::templates()),
        customer.clone(),
        events.clone(),
        options.clone(),
    )
    .expect("simulation runs");
    let json =
        |lines: &[Line]| -> Vec<String> { lines.iter().map(|l| l.to_json().to_string()).collect() };
    let simulated_json = json(&simulated);
    for database in [Database::Sqlite, Database::Postgres] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime starts")
            .block_on(played_on_the_runtime(
                workflows,
                customer.clone(),
                events.clone(),
                &options,
                database,
            ));
        let runtime_json = json(&runtime);
        if let Some(i) = (0..simulated_json.len().max(runtime_json.len()))
            .find(|&i| simulated_json.get(i) != runtime_json.get(i))
        {
            panic!(
                "the simulator and the runtime on {database:?} differ at line {i} of {}/{}:\n  simulator: {}\n  runtime:   {}",
                simulated_json.len(),
                runtime_json.len(),
                simulated_json.get(i).map_or("(none)", String::as_str),
                runtime_json.get(i).map_or("(none)", String::as_str),
            );
        }
    }
    simulated
}

#[test]
fn a_difference_between_the_two_is_reported() {
    // The check itself can fail: a runtime whose policy differs (a cap the simulator does not
    // have) gives another timeline.
    let workflow = crate::helpers::example("welcome_series");
    let ada = crate::helpers::customer(
        r#"{"id": "ada", "email": "ada@example.com", "attributes": {"plan": "pro"},
            "consent": {"email": true}}"#,
    );
    let events = crate::helpers::events("2026-03-02T15:00:00Z signup");
    let simulated = simulate::run(
        std::slice::from_ref(&workflow),
        Arc::new(crate::helpers::templates()),
        ada.clone(),
        events.clone(),
        Options::default(),
    )
    .unwrap();
    let capped = Options {
        policy: trellis::engine::policy::SendPolicy {
            caps: vec!["email=1/7d".parse().unwrap()],
            cap_mode: "drop".parse().unwrap(),
            ..Default::default()
        },
        ..Options::default()
    };
    for database in [Database::Sqlite, Database::Postgres] {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(played_on_the_runtime(
                std::slice::from_ref(&workflow),
                ada.clone(),
                events.clone(),
                &capped,
                database,
            ));
        assert_ne!(
            simulated.iter().map(Line::to_json).collect::<Vec<_>>(),
            runtime.iter().map(Line::to_json).collect::<Vec<_>>(),
            "{database:?}"
        );
    }
}
