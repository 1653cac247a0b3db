//! People who sign in: users, their identities at OpenID providers, their memberships
//! of tenants (with a role), invitations and email domains that make memberships, the
//! sessions they hold, the keys that sign those sessions, and the sign-ins in flight.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    Name,
    CreatedAt,
    LastSignInAt,
}

#[derive(DeriveIden)]
enum UserIdentities {
    Table,
    Provider,
    Subject,
    UserId,
    Email,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Memberships {
    Table,
    TenantId,
    UserId,
    Role,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Invitations {
    Table,
    Id,
    TenantId,
    Email,
    Role,
    InvitedBy,
    CreatedAt,
    ExpiresAt,
    AcceptedAt,
}

#[derive(DeriveIden)]
enum TenantEmailDomains {
    Table,
    Domain,
    TenantId,
    Role,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    TenantId,
    RefreshHash,
    CreatedAt,
    ExpiresAt,
    RefreshedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum SessionKeys {
    Table,
    Kid,
    SecretKey,
    PublicKey,
    CreatedAt,
    SignsUntil,
    AcceptedUntil,
}

#[derive(DeriveIden)]
enum OidcLogins {
    Table,
    State,
    Provider,
    Nonce,
    Verifier,
    ReturnTo,
    Tenant,
    CreatedAt,
    ExpiresAt,
}

fn column<T: IntoIden>(column: T) -> ColumnDef {
    ColumnDef::new(column)
}

fn timestamp<T: IntoIden>(name: T, nullable: bool) -> ColumnDef {
    let mut definition = ColumnDef::new(name);
    definition.timestamp_with_time_zone();
    if nullable {
        definition.null();
    } else {
        definition.not_null();
    }
    definition
}

fn to_tenant(name: &str, from: (impl IntoIden, impl IntoIden)) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(Tenants::Table, Tenants::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

fn to_user(name: &str, from: (impl IntoIden, impl IntoIden)) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(Users::Table, Users::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(column(Users::Id).uuid().not_null().primary_key())
                    .col(column(Users::Email).text().not_null())
                    .col(column(Users::Name).text().null())
                    .col(timestamp(Users::CreatedAt, false))
                    .col(timestamp(Users::LastSignInAt, true))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UserIdentities::Table)
                    .col(column(UserIdentities::Provider).string_len(64).not_null())
                    .col(column(UserIdentities::Subject).string_len(255).not_null())
                    .col(column(UserIdentities::UserId).uuid().not_null())
                    .col(column(UserIdentities::Email).text().not_null())
                    .col(timestamp(UserIdentities::CreatedAt, false))
                    .primary_key(
                        Index::create()
                            .col(UserIdentities::Provider)
                            .col(UserIdentities::Subject),
                    )
                    .foreign_key(&mut to_user(
                        "user_identities_user",
                        (UserIdentities::Table, UserIdentities::UserId),
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Memberships::Table)
                    .col(column(Memberships::TenantId).string_len(64).not_null())
                    .col(column(Memberships::UserId).uuid().not_null())
                    .col(column(Memberships::Role).string_len(16).not_null())
                    .col(timestamp(Memberships::CreatedAt, false))
                    .primary_key(
                        Index::create()
                            .col(Memberships::TenantId)
                            .col(Memberships::UserId),
                    )
                    .foreign_key(&mut to_tenant(
                        "memberships_tenant",
                        (Memberships::Table, Memberships::TenantId),
                    ))
                    .foreign_key(&mut to_user(
                        "memberships_user",
                        (Memberships::Table, Memberships::UserId),
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("memberships_user")
                    .table(Memberships::Table)
                    .col(Memberships::UserId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Invitations::Table)
                    .col(column(Invitations::Id).uuid().not_null().primary_key())
                    .col(column(Invitations::TenantId).string_len(64).not_null())
                    .col(column(Invitations::Email).text().not_null())
                    .col(column(Invitations::Role).string_len(16).not_null())
                    .col(column(Invitations::InvitedBy).text().null())
                    .col(timestamp(Invitations::CreatedAt, false))
                    .col(timestamp(Invitations::ExpiresAt, false))
                    .col(timestamp(Invitations::AcceptedAt, true))
                    .foreign_key(&mut to_tenant(
                        "invitations_tenant",
                        (Invitations::Table, Invitations::TenantId),
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("invitations_email")
                    .table(Invitations::Table)
                    .col(Invitations::Email)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TenantEmailDomains::Table)
                    .col(
                        column(TenantEmailDomains::Domain)
                            .string_len(255)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        column(TenantEmailDomains::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(column(TenantEmailDomains::Role).string_len(16).not_null())
                    .col(timestamp(TenantEmailDomains::CreatedAt, false))
                    .foreign_key(&mut to_tenant(
                        "tenant_email_domains_tenant",
                        (TenantEmailDomains::Table, TenantEmailDomains::TenantId),
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Sessions::Table)
                    .col(column(Sessions::Id).uuid().not_null().primary_key())
                    .col(column(Sessions::UserId).uuid().not_null())
                    .col(column(Sessions::TenantId).string_len(64).not_null())
                    .col(column(Sessions::RefreshHash).string_len(64).not_null())
                    .col(timestamp(Sessions::CreatedAt, false))
                    .col(timestamp(Sessions::ExpiresAt, false))
                    .col(timestamp(Sessions::RefreshedAt, true))
                    .col(timestamp(Sessions::RevokedAt, true))
                    .foreign_key(&mut to_user(
                        "sessions_user",
                        (Sessions::Table, Sessions::UserId),
                    ))
                    .foreign_key(&mut to_tenant(
                        "sessions_tenant",
                        (Sessions::Table, Sessions::TenantId),
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("sessions_refresh_hash")
                    .table(Sessions::Table)
                    .col(Sessions::RefreshHash)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SessionKeys::Table)
                    .col(
                        column(SessionKeys::Kid)
                            .string_len(32)
                            .not_null()
                            .primary_key(),
                    )
                    .col(column(SessionKeys::SecretKey).text().not_null())
                    .col(column(SessionKeys::PublicKey).text().not_null())
                    .col(timestamp(SessionKeys::CreatedAt, false))
                    .col(timestamp(SessionKeys::SignsUntil, false))
                    .col(timestamp(SessionKeys::AcceptedUntil, false))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OidcLogins::Table)
                    .col(
                        column(OidcLogins::State)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(column(OidcLogins::Provider).string_len(64).not_null())
                    .col(column(OidcLogins::Nonce).string_len(64).not_null())
                    .col(column(OidcLogins::Verifier).string_len(128).not_null())
                    .col(column(OidcLogins::ReturnTo).text().null())
                    .col(column(OidcLogins::Tenant).string_len(64).null())
                    .col(timestamp(OidcLogins::CreatedAt, false))
                    .col(timestamp(OidcLogins::ExpiresAt, false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            OidcLogins::Table.into_iden(),
            SessionKeys::Table.into_iden(),
            Sessions::Table.into_iden(),
            TenantEmailDomains::Table.into_iden(),
            Invitations::Table.into_iden(),
            Memberships::Table.into_iden(),
            UserIdentities::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
