"""sites: TLS-only sending and TLS delivery; site_certificates issued by the TLS CA

Revision ID: 0007
Revises: 0008
Create Date: 2026-12-01

0008 (login_throttles) was written before this revision and revises 0006, so this one
follows it: the chain is 0006 -> 0008 -> 0007.  Revision IDs are names, not an order.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tls_required', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('delivery_tls_ca', sa.Text(), nullable=True))
    op.create_table(
        'site_certificates',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('site_id', sa.String(length=64), nullable=False),
        sa.Column('serial', sa.String(length=64), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('subject', sa.String(length=255), nullable=False),
        sa.Column('cert_pem', sa.Text(), nullable=False),
        sa.Column('not_before', sa.DateTime(timezone=True), nullable=False),
        sa.Column('not_after', sa.DateTime(timezone=True), nullable=False),
        sa.Column('issued_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('issued_by', sa.String(length=128), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_by', sa.String(length=128), nullable=True),
        sa.Column('revoke_reason', sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(['site_id'], ['sites.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('fingerprint'),
        sa.UniqueConstraint('serial'),
    )
    with op.batch_alter_table('site_certificates', schema=None) as batch_op:
        batch_op.create_index('ix_site_certificates_site', ['site_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('site_certificates', schema=None) as batch_op:
        batch_op.drop_index('ix_site_certificates_site')
    op.drop_table('site_certificates')
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.drop_column('delivery_tls_ca')
        batch_op.drop_column('tls_required')
