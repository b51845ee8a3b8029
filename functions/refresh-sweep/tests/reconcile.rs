//! Reconciliation (`{"action": "reconcile"}` to refresh-sweep) against the
//! simulator's `GET /oauth/installedLocations`: missed INSTALL and UNINSTALL
//! webhooks repaired (an UNINSTALL only after two agreeing complete listings
//! a grace period apart, and a bounded share per run), a fresh link left
//! alone, a server that ignores `skip` never looped on, and no 200 that is
//! not provably the whole listing ever marking or erasing anything.

use ghl_sim::ListingFault;
use serde_json::{Value, json};
use shared::model::{InstallId, InstallState, now_millis};
use shared::store::{LinkState, LocationLink};
use std::time::Duration;
use testkit::stack::Stack;
use testkit::{FunctionProcess, InvokeOptions};

/// The log lines from `from` on, once the run's last line has arrived (the
/// function's output is read as it comes; the answer can be faster).
async fn lines_since(f: &FunctionProcess, from: usize) -> Vec<String> {
    for _ in 0..50 {
        let logs = f.logs();
        if logs[from.min(logs.len())..]
            .iter()
            .any(|l| l.contains("reconciliation finished"))
        {
            return logs[from..].to_vec();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no \"reconciliation finished\" line; logs: {:#?}", f.logs());
}

/// The value of an EMF counter in these lines (the last data point).
fn metric(lines: &[String], name: &str) -> Option<f64> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .filter_map(|v| v.get(name).and_then(Value::as_f64))
        .next_back()
}

/// The WARN lines about a company.
fn warnings(lines: &[String], company: &str) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == "WARN" && v["company_id"] == company)
        .collect()
}

/// An agency whose `n` locations HighLevel lists and we hold as linked (for
/// two hours: past the default grace), ids `{prefix}000`…
async fn agency(stack: &Stack, company: &str, prefix: &str, n: usize) -> Vec<String> {
    stack
        .seed_install(&InstallId::Company(company.into()), company, 86_399)
        .await;
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i:03}")).collect();
    let pairs: Vec<(&str, &str)> = ids.iter().map(|i| (i.as_str(), "Sub-account")).collect();
    stack.sim.add_locations(company, &pairs);
    let at = now_millis() - TWO_HOURS.as_millis() as i64;
    stack
        .store()
        .link_locations(company, &ids, at, "test")
        .await
        .unwrap();
    ids
}

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
        missing_since_ms: None,
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
    let grace = Duration::from_secs(5);
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("RECONCILE_PAGE_PACE_MS", "0"),
            ("RECONCILE_GRACE_SECS", "5"),
        ],
    );

    // The first listing links l3 at once, and only marks l4.
    let s = reconcile(&stack, &f).await;
    assert_eq!(
        (
            &s["companies"],
            &s["added"],
            &s["marked"],
            &s["removed"],
            &s["incomplete"],
            &s["failed"]
        ),
        (
            &json!(1),
            &json!(1),
            &json!(1),
            &json!(0),
            &json!(0),
            &json!(0)
        ),
        "{s}"
    );
    let links = store.links_of("co-r").await.unwrap();
    assert_eq!(
        state_of(&links, "l3"),
        Some(LinkState::Installed),
        "missed INSTALL linked"
    );
    let l4 = links.iter().find(|l| l.location_id == "l4").unwrap();
    assert_eq!(l4.state, LinkState::Installed, "one listing erases nothing");
    assert!(l4.missing_since_ms.is_some(), "{l4:?}");
    assert_eq!(stack.install(&minted_l4).await.state, InstallState::Active);
    let l5 = links.iter().find(|l| l.location_id == "l5").unwrap();
    assert_eq!(
        (l5.state, l5.missing_since_ms),
        (LinkState::Installed, None),
        "young link left alone"
    );

    // A second complete listing, the grace period later, that agrees.
    tokio::time::sleep(grace).await;
    let s = reconcile(&stack, &f).await;
    assert_eq!((&s["added"], &s["removed"]), (&json!(0), &json!(1)), "{s}");
    let links = store.links_of("co-r").await.unwrap();
    assert_eq!(
        state_of(&links, "l4"),
        Some(LinkState::Uninstalled),
        "missed UNINSTALL"
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
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_that_is_not_the_whole_listing_never_marks_or_erases() {
    let stack = Stack::new().await;
    let company = "co-w";
    let ids = agency(&stack, company, "w", 105).await;
    let minted = InstallId::Minted("w104".into());
    stack.seed_install(&minted, company, 86_399).await;
    let f = stack.spawn("refresh-sweep", &[("RECONCILE_PAGE_PACE_MS", "0")]);
    for (fault, why) in [
        (ListingFault::NoLocations, "no `locations` field"),
        (ListingFault::NoCount, "no `count` field"),
        (ListingFault::CountAsString, "`count` is a string"),
        // 100 = one full page: without a look past the end, the listing
        // would seem whole and w100…w104 gone.
        (
            ListingFault::CountOffBy { delta: -5 },
            "`count` says 100 but the page past it (skip 100) listed new ids",
        ),
        (
            ListingFault::CountOffBy { delta: -50 },
            "`count` says 55 but the page past it",
        ),
        (
            ListingFault::CountOffBy { delta: 95 },
            "`count` says 200 but 105 distinct locations were listed",
        ),
        (
            ListingFault::Empty,
            "HighLevel listed no location while 105 are linked as installed",
        ),
        (ListingFault::TraceIdOnly, "error-shaped body"),
        (ListingFault::ErrorEnvelope, "error-shaped body"),
        (ListingFault::ItemsWithoutId, "100 item(s) without `_id`"),
    ] {
        stack.sim.set_listing_fault(Some(fault));
        let from = f.logs().len();
        let s = reconcile(&stack, &f).await;
        let what = format!("{fault:?}: {s}");
        assert_eq!(
            (
                &s["incomplete"],
                &s["failed"],
                &s["removed"],
                &s["marked"],
                &s["added"]
            ),
            (&json!(1), &json!(0), &json!(0), &json!(0), &json!(0)),
            "{what}"
        );
        assert_eq!(s["problems"][0]["companyId"], company, "{what}");
        assert_eq!(s["problems"][0]["outcome"], "incomplete", "{what}");
        let reason = s["problems"][0]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{what}");
        let lines = lines_since(&f, from).await;
        assert_eq!(metric(&lines, "ReconcileIncomplete"), Some(1.0), "{what}");
        assert_eq!(metric(&lines, "ReconcileRemoved"), Some(0.0), "{what}");
        assert!(
            warnings(&lines, company)
                .iter()
                .any(|w| w["reason"].as_str().is_some_and(|r| r.contains(why))),
            "{what}: no WARN line naming the company and why"
        );
        let links = stack.store().links_of(company).await.unwrap();
        assert_eq!(links.len(), ids.len());
        for l in &links {
            assert_eq!(
                (l.state, l.missing_since_ms),
                (LinkState::Installed, None),
                "{what}: {l:?}"
            );
        }
    }
    assert_eq!(stack.install(&minted).await.state, InstallState::Active);

    // The same agency, answered properly, is whole again.
    stack.sim.set_listing_fault(None);
    let s = reconcile(&stack, &f).await;
    assert_eq!(
        (&s["incomplete"], &s["listed"], &s["marked"]),
        (&json!(0), &json!(105), &json!(0)),
        "{s}"
    );
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_location_listed_again_loses_its_mark_and_only_agreeing_listings_erase() {
    let stack = Stack::new().await;
    let company = "co-g";
    agency(&stack, company, "g", 12).await;
    let gone = InstallId::Minted("g000".into());
    stack.seed_install(&gone, company, 86_399).await;
    stack.sim.remove_location_silently(company, "g000");
    stack.sim.remove_location_silently(company, "g001");
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("RECONCILE_PAGE_PACE_MS", "0"),
            ("RECONCILE_GRACE_SECS", "3"),
        ],
    );
    let s = reconcile(&stack, &f).await;
    assert_eq!((&s["marked"], &s["removed"]), (&json!(2), &json!(0)), "{s}");
    // g001 comes back (HighLevel's list had lagged); g000 stays gone.
    stack.sim.add_locations(company, &[("g001", "Sub-account")]);
    let s = reconcile(&stack, &f).await;
    assert_eq!(
        (&s["cleared"], &s["marked"], &s["removed"]),
        (&json!(1), &json!(0), &json!(0)),
        "a mark younger than the grace period erases nothing: {s}"
    );
    let links = stack.store().links_of(company).await.unwrap();
    let g001 = links.iter().find(|l| l.location_id == "g001").unwrap();
    assert_eq!(
        (g001.state, g001.missing_since_ms),
        (LinkState::Installed, None)
    );
    assert_eq!(stack.install(&gone).await.state, InstallState::Active);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = f.logs().len();
    let s = reconcile(&stack, &f).await;
    assert_eq!((&s["removed"], &s["capped"]), (&json!(1), &json!(0)), "{s}");
    let lines = lines_since(&f, from).await;
    assert_eq!(metric(&lines, "ReconcileRemoved"), Some(1.0));
    assert!(
        warnings(&lines, company)
            .iter()
            .any(|w| w["location_id"] == "g000" && w["outcome"] == "removed"),
        "a removal is a WARN line"
    );
    let links = stack.store().links_of(company).await.unwrap();
    assert_eq!(state_of(&links, "g000"), Some(LinkState::Uninstalled));
    assert_eq!(state_of(&links, "g001"), Some(LinkState::Installed));
    assert_eq!(stack.install(&gone).await.state, InstallState::Uninstalled);
    stack.assert_logs_clean(&f.logs(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn removals_per_run_are_capped_and_the_rest_stay_marked() {
    let stack = Stack::new().await;
    let company = "co-c";
    let ids = agency(&stack, company, "c", 30).await;
    for id in &ids[..5] {
        stack.sim.remove_location_silently(company, id);
    }
    let f = stack.spawn(
        "refresh-sweep",
        &[
            ("RECONCILE_PAGE_PACE_MS", "0"),
            ("RECONCILE_GRACE_SECS", "1"),
            ("RECONCILE_MAX_REMOVALS_PERCENT", "10"),
        ],
    );
    let s = reconcile(&stack, &f).await;
    assert_eq!((&s["marked"], &s["removed"]), (&json!(5), &json!(0)), "{s}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 10 % of 30 installed links.
    let from = f.logs().len();
    let s = reconcile(&stack, &f).await;
    assert_eq!((&s["removed"], &s["capped"]), (&json!(3), &json!(2)), "{s}");
    let lines = lines_since(&f, from).await;
    assert_eq!(metric(&lines, "ReconcileCapped"), Some(2.0));
    assert!(
        warnings(&lines, company).iter().any(|w| w["capped"] == 2),
        "the cap is a WARN line naming the company"
    );
    let links = stack.store().links_of(company).await.unwrap();
    let gone: Vec<&LocationLink> = links
        .iter()
        .filter(|l| l.state == LinkState::Uninstalled)
        .collect();
    assert_eq!(gone.len(), 3);
    let waiting: Vec<&LocationLink> = links
        .iter()
        .filter(|l| l.state == LinkState::Installed && l.missing_since_ms.is_some())
        .collect();
    assert_eq!(waiting.len(), 2, "held back, still marked");
    assert!(
        gone.iter()
            .chain(&waiting)
            .all(|l| ids[..5].contains(&l.location_id))
    );
    // 10 % of the 27 left is 2: the rest go.
    let s = reconcile(&stack, &f).await;
    assert_eq!((&s["removed"], &s["capped"]), (&json!(2), &json!(0)), "{s}");
    let links = stack.store().links_of(company).await.unwrap();
    assert_eq!(
        links
            .iter()
            .filter(|l| l.state == LinkState::Installed)
            .count(),
        25
    );
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
