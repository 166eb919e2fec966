"""seqio Tasks and Mixtures over the token cache written by ``pipelines.tokenize``."""

from tasks.mixtures import MIXTURE_TOKEN_SHARES
from tasks.mixtures import MixtureConfigError
from tasks.mixtures import register_mixture
from tasks.mixtures import register_mixture_from_yaml
from tasks.mixtures import token_shares
from tasks.registry import DataDirError
from tasks.registry import MIXTURE_NAME
from tasks.registry import TASK_TIERS
from tasks.registry import get_vocabulary
from tasks.registry import read_sources
from tasks.registry import register_data_dir
from tasks.special_tokens import SpecialTokens
from tasks.special_tokens import SpecialTokensError
