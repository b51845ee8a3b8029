//! Reconciliation (`{"action": "reconcile"}` to refresh-sweep) against the
//! simulator's `GET /oauth/installedLocations`: missed INSTALL and UNINSTALL
//! webhooks repaired, a fresh link left alone, and a server that ignores
//! `skip` never looped on.

use serde_json::{Value, json};
use shared::model::{InstallId, InstallState, now_millis};
use shared::store::{LinkState, LocationLink};
use std::time::Duration;
use testkit::stack::Stack;
use testkit::{FunctionProcess, InvokeOptions};

async fn reconcile(stack: &Stack, f: &FunctionProcess) -> Value {
    stack
        .api
        .invoke_with(
            json!({"action": "reconcile"}),
            InvokeOptions::with_deadline(Duration::from_secs(60)),
        )
        .await
        .unwrap_or_else(|e| panic!("reconcile answered {e:?}; logs: {:#?}", f.logs()))
}

fn link(company: &str, location: &str, age: Duration) -> LocationLink {
    LocationLink {
        company_id: company.into(),
        location_id: location.into(),
        state: LinkState::Installed,
        at_ms: now_millis() - age.as_millis() as i64,
        source: "test".into(),
    }
}

fn state_of(links: &[LocationLink], location: &str) -> Option<LinkState> {
    links
        .iter()
        .find(|l| l.location_id == location)
        .map(|l| l.state)
}

const TWO_HOURS: Duration = Duration::from_secs(7200);

#[tokio::test(flavor = "multi_thread")]
async fn missed_installs_are_linked_and_missed_uninstalls_erased() {
    let stack = Stack::new().await;
    let company = InstallId::Company("co-r".into());
    stack.seed_install(&company, "co-r", 86_399).await;
    // HighLevel has the app on l1, l2 and l3.
    stack
        .sim
        .add_locations("co-r", &[("l1", "One"), ("l2", "Two"), ("l3", "Three")]);
    let store = stack.store();
    // We heard of l1 and l2, missed l3's INSTALL; we still hold l4 (and a
    // token minted for it), whose UNINSTALL we missed; l5 was linked a
    // moment ago (HighLevel's list may lag it).
    for (loc, age) in [
        ("l1", TWO_HOURS),
        ("l2", TWO_HOURS),
        ("l4", TWO_HOURS),
        ("l5", Duration::ZERO),
    ] {
        store.set_link(&link("co-r", loc, age)).await.unwrap();
    }
    let minted_l4 = InstallId::Minted("l4".into());
    let before_l4 = stack.seed_install(&minted_l4, "co-r", 86_399).await;
    stack.sim.remove_location_silently("co-r", "l4");
    let f = stack.spawn("refresh-sweep", &[("RECONCILE_PAGE_PACE_MS", "0")]);

    let s = reconcile(&stack, &f).await;
    assert_eq!(
        (
            &s["companies"],
            &s["added"],
            &s["removed"],
            &s["incomplete"],
            &s["failed"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(0), &json!(0)),
        "{s}"
    );
    let links = store.links_of("co-r").await.unwrap();
    assert_eq!(
        state_of(&links, "l3"),
        Some(LinkState::Installed),
        "missed INSTALL linked"
    );
    assert_eq!(
        state_of(&links, "l4"),
        Some(LinkState::Uninstalled),
        "missed UNINSTALL"
    );
    assert_eq!(
        state_of(&links, "l5"),
        Some(LinkState::Installed),
        "young link kept"
    );
    assert_eq!(state_of(&links, "l1"), Some(LinkState::Installed));
    let l4 = stack.install(&minted_l4).await;
    assert_eq!(l4.state, InstallState::Uninstalled);
    assert!(l4.due_at.is_none());
    let dump = format!("{:?}", stack.items().await);
    assert!(
        !dump.contains(before_l4.refresh_token.expose()),
        "the erased grant's refresh token is still in the table"
    );
    // The reverse link answers the mint's lookup of l3's company.
    let back = store.link_of("l3").await.unwrap().expect("reverse link");
    assert_eq!(back.company_id, "co-r");

    // A second run finds nothing to do.
    let s = reconcile(&stack, &f).await;
    assert_eq!((&s["added"], &s["removed"]), (&json!(0), &json!(0)), "{s}");
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_ignores_skip_is_not_looped_on_and_nothing_is_removed() {
    let stack = Stack::new().await;
    let company = InstallId::Company("co-s".into());
    stack.seed_install(&company, "co-s", 86_399).await;
    let names: Vec<(String, String)> = (0..250)
        .map(|i| (format!("s{i:03}"), format!("Loc {i}")))
        .collect();
    let refs: Vec<(&str, &str)> = names
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    stack.sim.add_locations("co-s", &refs);
    // One location we hold that is not on HighLevel's (broken) first page.
    stack
        .store()
        .set_link(&link("co-s", "s249", TWO_HOURS))
        .await
        .unwrap();
    stack.sim.set_ignore_skip(true);
    let f = stack.spawn("refresh-sweep", &[("RECONCILE_PAGE_PACE_MS", "0")]);
    let s = reconcile(&stack, &f).await;
    assert_eq!(&s["incomplete"], &json!(1), "{s}");
    assert_eq!(
        &s["pages"],
        &json!(2),
        "stopped at the first repeated page: {s}"
    );
    assert_eq!(
        &s["removed"],
        &json!(0),
        "an incomplete list removes nothing: {s}"
    );
    assert_eq!(&s["added"], &json!(100), "{s}");
    let links = stack.store().links_of("co-s").await.unwrap();
    assert_eq!(state_of(&links, "s249"), Some(LinkState::Installed));

    // The mint's listing is bounded the same way.
    let mint_api = testkit::RuntimeApi::start().await.unwrap();
    let m = stack.spawn_on(&mint_api, "token-mint", &[]);
    let list = mint_api
        .invoke_with(
            json!({"action": "listInstalledLocations", "companyId": "co-s"}),
            InvokeOptions::with_deadline(Duration::from_secs(30)),
        )
        .await
        .unwrap_or_else(|e| panic!("list answered {e:?}; logs: {:#?}", m.logs()));
    assert_eq!(list["complete"], false, "{}", list["count"]);
    assert_eq!(list["locations"].as_array().map(Vec::len), Some(100));
    assert_eq!(list["count"], 250);
    let mut logs = f.logs();
    logs.extend(m.logs());
    stack.assert_logs_clean(&logs, &[]).await;
}
