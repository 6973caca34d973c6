"""`--model potwatch`: lmms-eval's generate_until answered from potwatch's capped stream. The requests
are grouped by video; each video streams once through a `StreamSession` under the cap, and every
request about it is answered on the way (stream_pass.py), honouring its max_new_tokens and `until`,
decoded greedily. One line per video logs the peak cache against the cap and the compressions.

A streaming model has no use for a continuation's likelihood over a whole video, so loglikelihood
tasks are refused; multiple-choice tasks ask for the letter with generate_until instead."""

from __future__ import annotations

from loguru import logger
from lmms_eval.api.model import lmms
from tqdm import tqdm

from potwatch.lmms.requests import video_questions
from potwatch.lmms.settings import plugin_settings
from potwatch.lmms.stream_pass import answer_video, append_record, describe_pass


class PotwatchLMMS(lmms):
    """potwatch under lmms-eval: model_args as `potwatch watch` takes them (lmms/settings.py)."""

    is_simple = True

    def __init__(self, **model_args) -> None:
        super().__init__()
        self.settings = plugin_settings(model_args)  # every argument checked before the model loads
        from potwatch.models.registry import load_model
        from potwatch.threads import use_threads

        self.threads = use_threads(self.settings.stream.threads)  # potwatch's choice unless threads= or OMP_NUM_THREADS
        self.adapter = load_model(self.settings.model, dtype=self.settings.stream.dtype, device=self.settings.device,
                                  trust_remote_code=self.settings.trust_remote_code)
        self.passes: list[dict] = []  # one record per video streamed, for the log and the tests
        logger.info(f"potwatch: model {self.adapter.name}, {self.threads.describe()}")

    def generate_until(self, requests) -> list[str]:
        by_video = video_questions(requests, self.task_dict, self.settings.stream.max_new_tokens, warn=logger.warning)
        answers: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="potwatch", unit="question", disable=None)
        for video, questions in by_video.items():
            texts, record = answer_video(self.adapter, self.settings, video, questions)
            for index, text in texts.items():
                answers[index] = text
            self.passes.append(record)
            logger.info(describe_pass(record))
            if self.settings.stream_log:
                append_record(self.settings.stream_log, record)
            bar.update(len(questions))
        bar.close()
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError("potwatch answers by streaming each video and generating (generate_until); "
                                  "run a generate_until task, e.g. a multiple-choice task that asks for the letter.")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("potwatch answers one question at a time from the stream (generate_until); "
                                  "multi-round tasks are not supported.")
