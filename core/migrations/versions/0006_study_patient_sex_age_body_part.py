"""studies: patient sex, patient age and body part examined

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_sex', sa.String(length=16),
                                      nullable=False, server_default=''))
        batch_op.add_column(sa.Column('patient_age', sa.String(length=4),
                                      nullable=False, server_default=''))
        batch_op.add_column(sa.Column('body_part', sa.String(length=64),
                                      nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_column('body_part')
        batch_op.drop_column('patient_age')
        batch_op.drop_column('patient_sex')
