//! Internal chat: conversations, messages, idempotency, read marks, and tenant isolation of
//! every conversation RPC and of the stream.

use chat_engine_client::pb;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tonic::Code;

use crate::harness::{Events, TestApp, bearer, group, posted_text, send, violated_fields};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_create_direct_and_group_conversations_within_their_tenant() {
    let app = TestApp::spawn().await;
    let t = app.tenant("chat").await;
    let other = app.tenant("elsewhere").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let (bob, _) = app.agent(&t, "bob").await;
    let mut c = app.conversations();
    let direct = |to: &str| pb::CreateConversationRequest {
        kind: pb::ConversationKind::Direct as i32,
        member_agent_ids: vec![to.to_owned()],
        title: String::new(),
    };
    let d1 = c
        .create_conversation(bearer(direct(&bob), &ann_tok))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    // The same pair from the other side is the same conversation.
    let bob_tok = app
        .login("chat", "bob@chat.example", "agent-password-123")
        .await
        .unwrap()
        .access_token;
    let d2 = c
        .create_conversation(bearer(direct(&ann), &bob_tok))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(d1.id, d2.id);
    assert_eq!(d1.kind, pb::ConversationKind::Direct as i32);
    let mut members = d1.member_agent_ids.clone();
    members.sort();
    let mut expected = vec![ann.clone(), bob.clone()];
    expected.sort();
    assert_eq!(members, expected);

    // An agent of another tenant cannot be added: it does not exist here.
    let cross = c
        .create_conversation(bearer(direct(&other.admin_id), &ann_tok))
        .await
        .unwrap_err();
    assert_eq!(cross.code(), Code::NotFound);

    let no_title = c
        .create_conversation(bearer(
            pb::CreateConversationRequest {
                kind: pb::ConversationKind::Group as i32,
                member_agent_ids: vec![bob.clone()],
                title: String::new(),
            },
            &ann_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&no_title), ["title"]);

    let g = group(&app, &ann_tok, &[&bob]).await;
    let added = c
        .add_members(bearer(
            pb::AddMembersRequest {
                conversation_id: g.clone(),
                agent_ids: vec![t.admin_id.clone()],
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(added.member_agent_ids.len(), 3);
    // Only admins remove others; anyone may leave.
    let denied = c
        .remove_member(bearer(
            pb::RemoveMemberRequest {
                conversation_id: g.clone(),
                agent_id: bob.clone(),
            },
            &ann_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let left = c
        .remove_member(bearer(
            pb::RemoveMemberRequest {
                conversation_id: g.clone(),
                agent_id: bob.clone(),
            },
            &bob_tok,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(left.member_agent_ids.len(), 2);
    let gone = c
        .get_conversation(bearer(
            pb::GetConversationRequest { conversation_id: g },
            &bob_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_list_by_activity_with_unread_counts_and_last_message() {
    let app = TestApp::spawn().await;
    let t = app.tenant("inbox").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let (_, bob_tok) = app.agent(&t, "bob").await;
    let first = group(&app, &bob_tok, &[&ann]).await;
    let second = group(&app, &bob_tok, &[&ann]).await;
    send(&app, &bob_tok, &second, "old news").await.unwrap();
    send(&app, &bob_tok, &first, "hello").await.unwrap();
    let (_, seq) = send(&app, &bob_tok, &first, "are you there?")
        .await
        .unwrap();
    send(&app, &ann_tok, &first, "my own words do not count")
        .await
        .unwrap();

    let mut c = app.conversations();
    let list = c
        .list_conversations(bearer(
            pb::ListConversationsRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.conversations.len(), 1);
    let top = &list.conversations[0];
    assert_eq!(top.conversation.as_ref().unwrap().id, first);
    assert_eq!(top.unread_count, 2);
    assert_eq!(
        top.last_message.as_ref().unwrap().text,
        "my own words do not count"
    );
    let next = c
        .list_conversations(bearer(
            pb::ListConversationsRequest {
                page_size: 1,
                page_token: list.next_page_token,
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next.conversations[0].conversation.as_ref().unwrap().id,
        second
    );
    assert_eq!(next.conversations[0].unread_count, 1);

    let read = c
        .mark_read(bearer(
            pb::MarkReadRequest {
                conversation_id: first.clone(),
                seq,
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.read_seq, seq);
    assert_eq!(read.unread_count, 0);
    // Read positions never move back, and never past the end.
    let back = c
        .mark_read(bearer(
            pb::MarkReadRequest {
                conversation_id: first.clone(),
                seq: 1,
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.read_seq, seq);
    let far = c
        .mark_read(bearer(
            pb::MarkReadRequest {
                conversation_id: first.clone(),
                seq: 9_999,
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(far.read_seq, seq + 1);
    let got = c
        .get_conversation(bearer(
            pb::GetConversationRequest {
                conversation_id: first,
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    assert_eq!(got.unread_count, 0);
    assert_eq!(got.read_seq, seq + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_page_both_ways_and_authors_edit_and_delete() {
    let app = TestApp::spawn().await;
    let t = app.tenant("pager").await;
    let (ann, ann_tok) = app.agent(&t, "ann").await;
    let (_, bob_tok) = app.agent(&t, "bob").await;
    let conv = group(&app, &bob_tok, &[&ann]).await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(
            send(&app, &bob_tok, &conv, &format!("m{i}"))
                .await
                .unwrap()
                .1,
        );
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let mut c = app.conversations();
    let page = |direction: pb::ListDirection, anchor_seq: u32, page_token: String| {
        pb::ListMessagesRequest {
            conversation_id: conv.clone(),
            direction: direction as i32,
            anchor_seq,
            page_size: 2,
            page_token,
        }
    };
    // Backward from the newest.
    let mut texts = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_messages(bearer(
                page(pb::ListDirection::Backward, 0, token),
                &ann_tok,
            ))
            .await
            .unwrap()
            .into_inner();
        texts.extend(r.messages.into_iter().map(|m| m.text));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(texts, ["m4", "m3", "m2", "m1", "m0"]);
    // Forward after the second message.
    let fwd = c
        .list_messages(bearer(
            page(pb::ListDirection::Forward, seqs[1], String::new()),
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fwd.messages
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>(),
        ["m2", "m3"]
    );

    let target = fwd.messages[0].id.clone();
    let not_author = c
        .edit_message(bearer(
            pb::EditMessageRequest {
                conversation_id: conv.clone(),
                message_id: target.clone(),
                text: "hacked".into(),
            },
            &ann_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(not_author.code(), Code::PermissionDenied);
    let edited = c
        .edit_message(bearer(
            pb::EditMessageRequest {
                conversation_id: conv.clone(),
                message_id: target.clone(),
                text: "m2, edited".into(),
            },
            &bob_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(edited.message.as_ref().unwrap().text, "m2, edited");
    assert!(edited.message.as_ref().unwrap().edit_time.is_some());
    assert_eq!(edited.event_seq, seqs[4] + 1);
    let deleted = c
        .delete_message(bearer(
            pb::DeleteMessageRequest {
                conversation_id: conv.clone(),
                message_id: target.clone(),
            },
            &bob_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    let m = deleted.message.unwrap();
    assert!(m.deleted);
    assert!(m.text.is_empty());
    let again = c
        .edit_message(bearer(
            pb::EditMessageRequest {
                conversation_id: conv.clone(),
                message_id: target,
                text: "back".into(),
            },
            &bob_tok,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    // The history shows it deleted, in place; a replay shows both changes as events.
    let all = c
        .list_messages(bearer(
            pb::ListMessagesRequest {
                conversation_id: conv.clone(),
                ..Default::default()
            },
            &ann_tok,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(all.messages.iter().any(|m| m.deleted && m.seq == seqs[2]));
    let mut ev = Events::open(&app, &ann_tok, &[(&conv, seqs[4])])
        .await
        .unwrap();
    let replay = ev.caught_up().await;
    let kinds: Vec<_> = replay
        .iter()
        .map(|e| match e.kind {
            Some(pb::conversation_event::Kind::MessageEdited(_)) => "edited",
            Some(pb::conversation_event::Kind::MessageDeleted(_)) => "deleted",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["edited", "deleted"]);

    for (text, field) in [
        ("", "text"),
        ("   ", "text"),
        (&"x".repeat(8001)[..], "text"),
    ] {
        let e = c
            .send_message(bearer(
                pb::SendMessageRequest {
                    conversation_id: conv.clone(),
                    text: text.into(),
                    request_id: String::new(),
                },
                &bob_tok,
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&e), [field]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_is_stored_once_and_a_reused_id_is_refused() {
    let app = TestApp::spawn().await;
    let a = app.tenant("idem-a").await;
    let b = app.tenant("idem-b").await;
    let (a2, _) = app.agent(&a, "two").await;
    let (b2, _) = app.agent(&b, "two").await;
    let conv_a = group(&app, &a.admin_token, &[&a2]).await;
    let conv_b = group(&app, &b.admin_token, &[&b2]).await;
    let rid = uuid::Uuid::new_v4().to_string();
    let mut c = app.conversations();
    let req = |conv: &str, text: &str| pb::SendMessageRequest {
        conversation_id: conv.to_owned(),
        text: text.to_owned(),
        request_id: rid.clone(),
    };
    // Concurrent retries: one row, one answer.
    let tries = (0..4).map(|_| {
        let mut c = app.conversations();
        let r = bearer(req(&conv_a, "pay the invoice"), &a.admin_token);
        async move { c.send_message(r).await.map(|r| r.into_inner()) }
    });
    let answers: Vec<_> = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .map(|r| r.expect("retry failed"))
        .collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let later = c
        .send_message(bearer(req(&conv_a, "pay the invoice"), &a.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later, answers[0]);

    let other = c
        .send_message(bearer(req(&conv_a, "cancel the invoice"), &a.admin_token))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);

    // Another tenant using the same request id gets its own message.
    let theirs = c
        .send_message(bearer(req(&conv_b, "pay the invoice"), &b.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(theirs.message_id, answers[0].message_id);

    let history = c
        .list_messages(bearer(
            pb::ListMessagesRequest {
                conversation_id: conv_a,
                ..Default::default()
            },
            &a.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.messages.len(), 1);
    assert_eq!(history.messages[0].text, "pay the invoice");

    let bad = c
        .send_message(bearer(
            pb::SendMessageRequest {
                conversation_id: conv_b,
                text: "x".into(),
                request_id: "not-a-uuid".into(),
            },
            &b.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["request_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_batched_with_accepted_ones_take_no_seq_and_touch_nothing() {
    let app = TestApp::spawn().await;
    let t = app.tenant("mixed").await;
    let (ann, _) = app.agent(&t, "ann").await;
    let (_, eve_tok) = app.agent(&t, "eve").await;
    let bob_tok = t.admin_token.clone();
    let x = group(&app, &bob_tok, &[&ann]).await;
    let y = group(&app, &bob_tok, &[&ann]).await;
    send(&app, &bob_tok, &y, "before").await.unwrap();
    let get = |conv: String| {
        let mut c = app.conversations();
        let tok = bob_tok.clone();
        async move {
            c.get_conversation(bearer(
                pb::GetConversationRequest {
                    conversation_id: conv,
                },
                &tok,
            ))
            .await
            .unwrap()
            .into_inner()
            .conversation
            .unwrap()
            .conversation
            .unwrap()
        }
    };
    let (x_before, y_before) = (get(x.clone()).await, get(y.clone()).await);

    // One burst, so that the writer's batches mix them: Bob's sends into X, Eve's (not a
    // member of either) into X and Y, and retries of Bob's first sends.
    let rids: Vec<String> = (0..30).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let call = |tok: &str, conv: &str, text: String, rid: String| {
        let mut c = app.conversations();
        let r = bearer(
            pb::SendMessageRequest {
                conversation_id: conv.to_owned(),
                text,
                request_id: rid,
            },
            tok,
        );
        async move { c.send_message(r).await.map(|r| r.into_inner()) }
    };
    let mut calls = Vec::new();
    for (i, rid) in rids.iter().enumerate() {
        calls.push(call(&bob_tok, &x, format!("bob {i}"), rid.clone()));
        calls.push(call(&eve_tok, &x, format!("eve {i}"), String::new()));
        calls.push(call(&eve_tok, &y, format!("eve {i}"), String::new()));
        if i < 10 {
            calls.push(call(&bob_tok, &x, format!("bob {i}"), rid.clone()));
        }
    }
    let answers = futures_util::future::join_all(calls).await;
    let (mut bob, mut eve) = (Vec::new(), 0);
    for a in answers {
        match a {
            Ok(sent) => bob.push(sent),
            Err(e) => {
                assert_eq!(e.code(), Code::NotFound, "{e:?}");
                eve += 1;
            }
        }
    }
    assert_eq!(eve, 60);
    assert_eq!(bob.len(), 40);
    bob.sort_by_key(|s| s.seq);
    bob.dedup();
    // Thirty messages, the retries answered with them, on the thirty seqs after X's last.
    let seqs: Vec<u32> = bob.iter().map(|s| s.seq).collect();
    let expected: Vec<u32> = (x_before.last_seq + 1..=x_before.last_seq + 30).collect();
    assert_eq!(seqs, expected);
    assert_eq!(get(x.clone()).await.last_seq, x_before.last_seq + 30);
    // Y took no seq and no activity from the refused sends.
    let y_after = get(y.clone()).await;
    assert_eq!(
        (y_after.last_seq, y_after.last_activity_time),
        (y_before.last_seq, y_before.last_activity_time)
    );
    let (_, next) = send(&app, &bob_tok, &x, "after").await.unwrap();
    assert_eq!(next, x_before.last_seq + 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_conversations_are_not_found_by_any_rpc_or_stream() {
    let app = TestApp::spawn().await;
    let a = app.tenant("conv-a").await;
    let b = app.tenant("conv-b").await;
    let (a2, _) = app.agent(&a, "two").await;
    let conv = group(&app, &a.admin_token, &[&a2]).await;
    let (msg, seq) = send(&app, &a.admin_token, &conv, "secret plans")
        .await
        .unwrap();
    let tok = b.admin_token.clone();
    let mut c = app.conversations();
    let cases: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "GetConversation",
            c.get_conversation(bearer(
                pb::GetConversationRequest {
                    conversation_id: conv.clone(),
                },
                &tok,
            ))
            .await
            .map(drop),
        ),
        ("SendMessage", send(&app, &tok, &conv, "hi").await.map(drop)),
        (
            "ListMessages",
            c.list_messages(bearer(
                pb::ListMessagesRequest {
                    conversation_id: conv.clone(),
                    ..Default::default()
                },
                &tok,
            ))
            .await
            .map(drop),
        ),
        (
            "EditMessage",
            c.edit_message(bearer(
                pb::EditMessageRequest {
                    conversation_id: conv.clone(),
                    message_id: msg.clone(),
                    text: "x".into(),
                },
                &tok,
            ))
            .await
            .map(drop),
        ),
        (
            "DeleteMessage",
            c.delete_message(bearer(
                pb::DeleteMessageRequest {
                    conversation_id: conv.clone(),
                    message_id: msg.clone(),
                },
                &tok,
            ))
            .await
            .map(drop),
        ),
        (
            "MarkRead",
            c.mark_read(bearer(
                pb::MarkReadRequest {
                    conversation_id: conv.clone(),
                    seq,
                },
                &tok,
            ))
            .await
            .map(drop),
        ),
        (
            "SetTyping",
            c.set_typing(bearer(
                pb::SetTypingRequest {
                    conversation_id: conv.clone(),
                    typing: true,
                },
                &tok,
            ))
            .await
            .map(drop),
        ),
        (
            "AddMembers",
            c.add_members(bearer(
                pb::AddMembersRequest {
                    conversation_id: conv.clone(),
                    agent_ids: vec![b.admin_id.clone()],
                },
                &tok,
            ))
            .await
            .map(drop),
        ),
        (
            "RemoveMember",
            c.remove_member(bearer(
                pb::RemoveMemberRequest {
                    conversation_id: conv.clone(),
                    agent_id: b.admin_id.clone(),
                },
                &tok,
            ))
            .await
            .map(drop),
        ),
        (
            "Subscribe",
            Events::open(&app, &tok, &[(&conv, 0)]).await.map(drop),
        ),
    ];
    for (rpc, r) in cases {
        let e = match r {
            Err(e) => e,
            // A stream reports its error on the first read.
            Ok(()) if rpc == "Subscribe" => {
                let mut ev = Events::open(&app, &tok, &[(&conv, 0)]).await.unwrap();
                ev.next().await.expect_err("stream must fail")
            }
            Ok(()) => panic!("{rpc} succeeded across tenants"),
        };
        assert_eq!(e.code(), Code::NotFound, "{rpc}: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_the_same_conversation_uuid_never_see_each_others_events() {
    let app = TestApp::spawn().await;
    let a = app.tenant("twin-a").await;
    let b = app.tenant("twin-b").await;
    let (a2, _) = app.agent(&a, "two").await;
    let conv = group(&app, &a.admin_token, &[&a2]).await;
    // Tenant B gets a conversation with the very same id (possible: keys are per tenant).
    let mut db = AsyncPgConnection::establish(&app.admin_url).await.unwrap();
    for sql in [
        "INSERT INTO conversations (tenant_id, conversation_id, kind, title) VALUES ($1::uuid, $2::uuid, 'group', 'twin')",
        "INSERT INTO conversation_members (tenant_id, conversation_id, user_id) VALUES ($1::uuid, $2::uuid, $3::uuid)",
    ] {
        diesel::sql_query(sql)
            .bind::<Text, _>(&b.tenant_id)
            .bind::<Text, _>(&conv)
            .bind::<Text, _>(&b.admin_id)
            .execute(&mut db)
            .await
            .unwrap();
    }
    let mut a_events = Events::open(&app, &a.admin_token, &[(&conv, 0)])
        .await
        .unwrap();
    let mut b_events = Events::open(&app, &b.admin_token, &[(&conv, 0)])
        .await
        .unwrap();
    let a_replay = a_events.caught_up().await;
    assert_eq!(a_replay.len(), 1, "A sees its creation event");
    assert!(
        b_events.caught_up().await.is_empty(),
        "B's twin has no events"
    );

    send(&app, &a.admin_token, &conv, "for tenant A only")
        .await
        .unwrap();
    send(&app, &b.admin_token, &conv, "for tenant B only")
        .await
        .unwrap();
    let a_next = a_events.event().await;
    let b_next = b_events.event().await;
    assert_eq!(posted_text(&a_next), Some("for tenant A only"));
    assert_eq!(posted_text(&b_next), Some("for tenant B only"));
    // B's twin is at seq 1, A's at seq 2: separate counters, separate streams.
    assert_eq!(b_next.seq, 1);
    assert_eq!(a_next.seq, 2);
    let history = app
        .conversations()
        .list_messages(bearer(
            pb::ListMessagesRequest {
                conversation_id: conv,
                ..Default::default()
            },
            &b.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.messages.len(), 1);
    assert_eq!(history.messages[0].text, "for tenant B only");
}
