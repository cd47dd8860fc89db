"""Callbacks that tests load by class path into real `salmonn-symbols fit` runs."""

import lightning as L


class FrozenPartsInEval(L.Callback):
    """Fails the run if a frozen speech-path part is in training mode during a training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        m = pl_module.model
        parts = {"whisper": m.whisper, "beats": m.beats}
        if not any(p.requires_grad for p in m.speech_parameters()):
            parts |= {"qformer": m.speech_qformer, "proj": m.speech_llama_proj}
        live = [name for name, part in parts.items() if any(x.training for x in part.modules())]
        if live:
            raise AssertionError(f"frozen parts in training mode at epoch {trainer.current_epoch}: {live}")
        if not pl_module.model.llm.training:
            raise AssertionError("the LLM (LoRA dropout) should be in training mode")


class BookHandedOver(L.Callback):
    """Fails the run unless the data side substitutes from its own copy of the cycle's current book."""

    def on_train_epoch_start(self, trainer, pl_module):
        dm_book, book = trainer.datamodule.book, pl_module.cycle.book
        if dm_book is book or dm_book.mapping != book.mapping:
            raise AssertionError(f"epoch {trainer.current_epoch}: data book {dm_book.mapping} vs {book.mapping}")
        self.epochs = getattr(self, "epochs", 0) + 1


class EpochData(L.Callback):
    """Fails the run unless every training batch is the one the sampler draws for this epoch and batch index, and
    every epoch has all of its batches."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import copy

        dm = trainer.datamodule
        sampler = copy.copy(dm.train_sampler)
        sampler.epoch, sampler.batches_done = trainer.current_epoch, 0
        samples = dm.load_split("train")
        want = [samples[d][i].id for d, i, _ in sampler.epoch_batches()[batch_idx]]
        if batch["ids"] != want:
            raise AssertionError(f"epoch {trainer.current_epoch} batch {batch_idx}: {batch['ids']} is not {want}")
        self.batches = getattr(self, "batches", 0) + 1

    def on_train_epoch_start(self, trainer, pl_module):
        self.batches = 0

    def on_train_epoch_end(self, trainer, pl_module):
        if self.batches != len(trainer.datamodule.train_sampler):
            raise AssertionError(f"epoch {trainer.current_epoch}: {self.batches} batches, not the sampler's length")
