"""LoRA fine-tuning of gpt-oss on Harmony conversations: :mod:`.data` renders the training examples with
gptoss's own Harmony renderer (the tokens the server will feed the model), :mod:`.train` runs TRL's
``SFTTrainer`` with a PEFT LoRA config and writes an adapter that ``gptoss serve --lora`` loads."""
