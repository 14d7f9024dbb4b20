# placeholder: replaced by the netns branch
