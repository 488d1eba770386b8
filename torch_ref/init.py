"""The torch recipe for :func:`jaxseq.init.recommended`: orthogonal gate blocks, zero biases,
forget bias 1.

torch adds ``bias_ih + bias_hh`` in every gate, so an LSTM forget bias of 1 goes into exactly one of
them; filling the forget block of both (a frequent port of Keras' ``unit_forget_bias``) gives 2.
"""
from __future__ import annotations

import torch
from torch import nn


def recommended_init_(rnn: nn.RNNBase, forget_bias: float = 1.0) -> nn.RNNBase:
    """Re-initialise ``rnn`` in place and return it.

    * ``weight_ih_l*`` / ``weight_hh_l*``: each gate block ``[H, in]`` orthogonal on its own
      (``nn.init.orthogonal_`` on ``weight.split(H)``: orthonormal rows when ``H <= in``, else columns);
    * ``weight_hr_l*`` (LSTM projection): orthogonal;
    * biases zero, then (LSTM only) ``bias_ih[H:2H] = forget_bias``: effective forget bias
      ``forget_bias``.

    >>> lstm = recommended_init_(nn.LSTM(3, 2))
    >>> (lstm.bias_ih_l0 + lstm.bias_hh_l0).tolist()
    [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    H = rnn.hidden_size
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            if name.startswith("weight_hr"):
                nn.init.orthogonal_(param)
            elif name.startswith("weight"):
                for block in param.split(H):
                    nn.init.orthogonal_(block)
            else:
                param.zero_()
                if rnn.mode == "LSTM" and name.startswith("bias_ih"):
                    param[H:2 * H] = forget_bias
    return rnn
